"""Detector benchmark: labelled synthetic runs replayed through the service, next to rlwatch.

Traces come from `bench/detector_traces.py` (healthy GRPO runs at several noise levels, and
runs with one injected event from an onset step). Each trace is its own run in an in-process
service (`create_app` over `httpx.ASGITransport`, a fresh PostgreSQL database, migrated, real
API keys), set to `observe` so no command alters the trace; every report goes through
`POST /v1/runs/{run}/steps` and the findings come back from `GET /v1/runs/{run}/findings`.
`--backend direct` calls the pure detector functions instead (no database), and the script
falls back to it, saying so in the header, when the service has no findings route.

Per scenario: recall (a finding of a detector that counts for the scenario within `--window`
steps of the onset), precision (findings at or after the onset from a counting detector, over
all findings on the scenario's traces), false alarms per 1,000 healthy steps (any finding on a
healthy trace or before the onset) and the median steps from onset to detection. The same
traces go through rlwatch's detectors (`DetectorSuite` with its default config, alerts passed
through its `AlertManager` cooldowns) where rlwatch has a comparable detector.

    python bench/detectors.py [--seeds 0] [--noise 0.5 1 2 3] [--steps 120] [--window 20]
        [--healthy-per 2] [--backend service|direct] [--concurrency 2] [--no-rlwatch]

The default (40 traces of 120 steps: 8 healthy, 32 with an event, at noise 0.5, 1, 2 and 3)
goes through the service; `--backend direct` (the same detectors without HTTP or database,
~2 s of CPU per trace) suits larger sweeps (`--seeds 0 1 2 3`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchDatabase, machine  # noqa: E402
from detector_traces import HEALTHY, RLWATCH_CATCHERS, SCENARIOS, Trace, make_traces, wire  # noqa: E402

RECALL_TARGET = 0.95
FA_TARGET = 1.0  # per 1,000 healthy steps


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Outcome:
    trace: Trace
    findings: list[tuple[int, str]] = field(default_factory=list)
    """(step, detector), in report order."""


# ---------------------------------------------------------------- rlkeel: through the service


class ServiceBackend:
    name = "service"

    def __init__(self, concurrency: int) -> None:
        from rlkeel.server.app import create_app
        from rlkeel.server.auth import Role, create_api_key
        from rlkeel.server.db.migrate import upgrade
        from rlkeel.server.settings import Settings

        self.concurrency = concurrency
        self.db = BenchDatabase.create()
        settings = Settings(database_url=self.db.url, log_level="warning",
                            db_pool_size=max(4, concurrency + 2))  # fmt: skip
        upgrade(settings)
        self.app = create_app(settings)
        with self.app.state.session_factory() as session:
            self.trainer = create_api_key(session, role=Role.trainer, name="bench-trainer")
            self.operator = create_api_key(session, role=Role.operator, name="bench-operator")
            session.commit()
        paths = set(self.app.openapi().get("paths", {}))
        self.has_findings = "/v1/runs/{run}/findings" in paths
        self.has_automation = "/v1/runs/{run}/automation" in paths

    def close(self) -> None:
        self.app.state.engine.dispose()
        self.db.drop()

    async def _replay(self, client: Any, tr: Trace) -> Outcome:
        t_hdr = {"Authorization": f"Bearer {self.trainer}", "content-type": "application/json"}
        o_hdr = {"Authorization": f"Bearer {self.operator}"}
        r = await client.post("/v1/runs", headers=t_hdr, content=json.dumps(
            {"name": tr.name, "algorithm": tr.algorithm, "model": {"name": "bench"}}))  # fmt: skip
        r.raise_for_status()
        run = r.json()["id"]
        if self.has_automation:
            r = await client.put(f"/v1/runs/{run}/automation", headers=o_hdr,
                                 json={"mode": "observe"})  # fmt: skip
            r.raise_for_status()
        for rollout, update in tr.reports():
            for body in (rollout, update):
                r = await client.post(f"/v1/runs/{run}/steps", headers=t_hdr,
                                      content=json.dumps(wire(body), allow_nan=False))  # fmt: skip
                if r.status_code not in (200, 201):
                    raise SystemExit(f"{tr.name} step {body['step']} {body['phase']}: "
                                     f"{r.status_code} {r.text[:500]}")  # fmt: skip
        out = Outcome(tr)
        after: int | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if after is not None:
                params["after"] = after
            r = await client.get(f"/v1/runs/{run}/findings", headers=o_hdr, params=params)
            r.raise_for_status()
            page = r.json()
            out.findings += [(int(f["step"]), str(f["detector"])) for f in page]
            if len(page) < 1000:
                break
            after = page[-1]["id"]
        return out

    def run(self, traces: list[Trace]) -> list[Outcome]:
        return asyncio.run(self._run(traces))

    async def _run(self, traces: list[Trace]) -> list[Outcome]:
        import httpx

        sem = asyncio.Semaphore(self.concurrency)
        done = 0
        t0 = time.monotonic()

        async def one(client: httpx.AsyncClient, tr: Trace) -> Outcome:
            nonlocal done
            async with sem:
                out = await self._replay(client, tr)
            done += 1
            log(f"[service] {done}/{len(traces)} {tr.name}: {len(out.findings)} finding(s) "
                f"({time.monotonic() - t0:.0f} s)")  # fmt: skip
            return out

        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                     timeout=120) as client:  # fmt: skip
            return list(await asyncio.gather(*(one(client, tr) for tr in traces)))


# ---------------------------------------------------------------- rlkeel: the pure functions


class DirectBackend:
    name = "direct"

    def close(self) -> None:
        pass

    def run(self, traces: list[Trace]) -> list[Outcome]:
        from rlkeel.client.schemas import StepReport
        from rlkeel.server.detectors import (
            RunDetectorState,
            evaluate_rollout,
            evaluate_update,
            forest_refit_due,
            refit_isolation_forest,
        )
        from rlkeel.server.policy import DEFAULT_POLICY

        outs = []
        t0 = time.monotonic()
        for n, tr in enumerate(traces, 1):
            state = RunDetectorState(seed=n)
            out = Outcome(tr)
            for rollout, update in tr.reports():
                ev = evaluate_rollout(state, StepReport.model_validate(rollout), DEFAULT_POLICY)
                out.findings += [(f.step, f.detector) for f in ev.findings]
                if forest_refit_due(state, DEFAULT_POLICY):  # the service does this off-path
                    refit_isolation_forest(state, DEFAULT_POLICY)
                found = evaluate_update(state, StepReport.model_validate(update), DEFAULT_POLICY)
                out.findings += [(f.step, f.detector) for f in found]
            outs.append(out)
            log(f"[direct] {n}/{len(traces)} {tr.name}: {len(out.findings)} finding(s) "
                f"({time.monotonic() - t0:.0f} s)")  # fmt: skip
        return outs


# ---------------------------------------------------------------- rlwatch


def rlwatch_outcomes(traces: list[Trace]) -> tuple[list[Outcome] | None, str]:
    try:
        import rlwatch
        import rlwatch.alerts as rw_alerts
        from rlwatch.config import RLWatchConfig
        from rlwatch.detectors import DetectorSuite
    except Exception as exc:  # noqa: BLE001
        return None, f"rlwatch unavailable ({type(exc).__name__}: {exc}); `pip install rlwatch`"
    version = getattr(rlwatch, "__version__", "?")
    rw_alerts._log_alert_console = lambda *a, **k: None  # no console spam
    outs = []
    for tr in traces:
        cfg = RLWatchConfig()
        suite = DetectorSuite(cfg)
        alerts = rw_alerts.AlertManager(cfg.alerts, run_id=tr.name)
        out = Outcome(tr)
        for rollout, update in tr.reports():
            m = {**rollout["metrics"], **update["metrics"]}
            for a in suite.check_step(
                rollout["step"], entropy=m.get("entropy_mean"), kl_divergence=m.get("kl_mean"),
                reward_mean=m.get("reward_mean"), reward_std=m.get("reward_std"),
                advantage_std=m.get("advantage_std"), loss=m.get("loss"),
                grad_norm=m.get("grad_norm"),
            ):  # fmt: skip
                if alerts.send(a):
                    out.findings.append((a.step, a.detector))
        outs.append(out)
    return outs, f"rlwatch {version} (default config: DetectorSuite + AlertManager cooldowns)"


# ---------------------------------------------------------------- scoring


@dataclass
class Score:
    traces: int = 0
    caught: int = 0
    delays: list[int] = field(default_factory=list)
    correct: int = 0
    total: int = 0
    fa: int = 0
    healthy_steps: int = 0
    fa_by: Counter[str] = field(default_factory=Counter)

    @property
    def recall(self) -> float:
        return self.caught / self.traces if self.traces else math.nan

    @property
    def precision(self) -> float:
        return self.correct / self.total if self.total else math.nan

    @property
    def fa_per_1k(self) -> float:
        return 1000 * self.fa / self.healthy_steps if self.healthy_steps else math.nan

    @property
    def median_delay(self) -> float:
        return statistics.median(self.delays) if self.delays else math.nan


def score(outs: list[Outcome], window: int, *, rlwatch: bool) -> dict[str, Score]:
    scores: dict[str, Score] = {}
    for o in outs:
        tr = o.trace
        s = scores.setdefault(tr.scenario, Score())
        s.traces += 1
        s.total += len(o.findings)
        if tr.onset is None:
            s.healthy_steps += tr.steps
            s.fa += len(o.findings)
            s.fa_by.update(d for _, d in o.findings)
            continue
        catchers = set(tr.rlwatch_catchers if rlwatch else tr.catchers)
        s.healthy_steps += tr.onset
        pre = [d for step, d in o.findings if step < tr.onset]
        s.fa += len(pre)
        s.fa_by.update(pre)
        s.correct += sum(1 for step, d in o.findings if step >= tr.onset and d in catchers)
        hits = [step for step, d in o.findings
                if d in catchers and tr.onset <= step <= tr.onset + window]  # fmt: skip
        if hits:
            s.caught += 1
            s.delays.append(min(hits) - tr.onset)
    return scores


def overall_fa(scores: dict[str, Score]) -> Score:
    tot = Score()
    for s in scores.values():
        tot.fa += s.fa
        tot.healthy_steps += s.healthy_steps
        tot.fa_by.update(s.fa_by)
    return tot


def fmt(x: float, spec: str = ".2f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_table(ours: dict[str, Score], theirs: dict[str, Score] | None, scenarios: list[str]) -> list[str]:
    misses: list[str] = []
    print(f"{'scenario':<18} | {'rlkeel: recall':>14} {'prec':>5} {'FA/1k':>6} {'delay':>5} "
          f"| {'rlwatch: recall':>15} {'prec':>5} {'FA/1k':>6} {'delay':>5} | targets")  # fmt: skip
    for name in [HEALTHY, *scenarios]:
        k = ours.get(name)
        if k is None:
            continue
        row = f"{name:<18} | "
        if name == HEALTHY:
            row += f"{'':>14} {'':>5} {fmt(k.fa_per_1k):>6} {'':>5} | "
        else:
            row += (f"{fmt(k.recall):>14} {fmt(k.precision):>5} {fmt(k.fa_per_1k):>6} "
                    f"{fmt(k.median_delay, '.0f'):>5} | ")  # fmt: skip
        w = theirs.get(name) if theirs is not None else None
        shared = name == HEALTHY or bool(RLWATCH_CATCHERS.get(name))
        if w is None:
            row += f"{'n/a':>15} {'':>5} {'':>6} {'':>5} | "
        elif name == HEALTHY:
            row += f"{'':>15} {'':>5} {fmt(w.fa_per_1k):>6} {'':>5} | "
        elif not shared:
            row += f"{'no comparable':>15} {'':>5} {fmt(w.fa_per_1k):>6} {'':>5} | "
        else:
            row += (f"{fmt(w.recall):>15} {fmt(w.precision):>5} {fmt(w.fa_per_1k):>6} "
                    f"{fmt(w.median_delay, '.0f'):>5} | ")  # fmt: skip
        bad = []
        if name != HEALTHY and not k.recall >= RECALL_TARGET:
            bad.append("recall")
        if not k.fa_per_1k <= FA_TARGET:
            bad.append("FA")
        if name != HEALTHY and w is not None and shared:
            if not k.recall >= w.recall:
                bad.append("recall<rlwatch")
            if not k.fa_per_1k < w.fa_per_1k:
                bad.append("FA≥rlwatch")
        row += "MISS " + ",".join(bad) if bad else "ok"
        if bad:
            misses.append(f"{name}: {', '.join(bad)}")
        print(row)
    return misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0],
                        help="noise levels (multipliers of the step-to-step noise)")
    parser.add_argument("--steps", type=int, default=120, help="steps per trace")
    parser.add_argument("--healthy-per", type=int, default=2,
                        help="healthy traces per seed and noise level")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--window", type=int, default=20, help="steps after onset that count")
    parser.add_argument("--backend", choices=["service", "direct"], default="service")
    parser.add_argument("--concurrency", type=int, default=2, help="runs replayed at once")
    parser.add_argument("--no-rlwatch", action="store_true")
    args = parser.parse_args()

    traces = make_traces(seeds=args.seeds, noises=args.noise, steps=args.steps,
                         scenarios=args.scenarios, healthy_per=args.healthy_per)  # fmt: skip
    t0 = time.monotonic()
    backend: ServiceBackend | DirectBackend
    header = ""
    if args.backend == "service":
        backend = ServiceBackend(args.concurrency)
        if not backend.has_findings:
            backend.close()
            backend = DirectBackend()
            header = ("FALLBACK: the service has no GET /v1/runs/{run}/findings; rlkeel's "
                      "figures come from the pure detector functions (DEFAULT_POLICY)")  # fmt: skip
        elif not backend.has_automation:
            header = "note: no PUT /v1/runs/{run}/automation; runs stay in their default mode"
    else:
        backend = DirectBackend()
    try:
        ours_out = backend.run(traces)
    finally:
        backend.close()
    t_ours = time.monotonic() - t0
    theirs_out: list[Outcome] | None = None
    rw_note = "rlwatch skipped (--no-rlwatch)"
    if not args.no_rlwatch:
        log("[rlwatch] replaying")
        theirs_out, rw_note = rlwatch_outcomes(traces)

    n_h = sum(1 for t in traces if t.healthy)
    print(f"machine: {machine()}")
    if backend.name == "service":
        print("rlkeel: in-process service (create_app over httpx.ASGITransport), PostgreSQL "
              "(a fresh database), one run per trace in `observe` mode, findings from "
              "GET /v1/runs/{run}/findings")  # fmt: skip
    else:
        print("rlkeel: pure detector functions (evaluate_rollout / evaluate_update, "
              "DEFAULT_POLICY, IsolationForest refit inline when due), no service")  # fmt: skip
    if header:
        print(header)
    print(f"comparison: {rw_note}")
    print(f"traces: {len(traces)} ({n_h} healthy, {len(traces) - n_h} with one event), "
          f"{args.steps} steps each, seeds {args.seeds}, noise {args.noise}, GRPO, "
          f"64 samples/step (8 groups of 8); window {args.window} steps after onset; "
          f"rlkeel replay {t_ours:.0f} s")  # fmt: skip
    print("recall: event caught by a counting detector within the window; prec: counting "
          "findings at/after onset / all findings on those traces; FA/1k: findings on healthy "
          "traces or before onset per 1,000 such steps; delay: median steps onset → detection")
    print()
    ours = score(ours_out, args.window, rlwatch=False)
    theirs = score(theirs_out, args.window, rlwatch=True) if theirs_out is not None else None
    misses = print_table(ours, theirs, args.scenarios)
    tot = overall_fa(ours)
    print()
    print(f"rlkeel overall: {tot.fa} false alarm(s) in {tot.healthy_steps} healthy steps = "
          f"{fmt(tot.fa_per_1k)}/1k; by detector: "
          f"{', '.join(f'{d} {c}' for d, c in tot.fa_by.most_common()) or 'none'}")  # fmt: skip
    if theirs is not None:
        tw = overall_fa(theirs)
        print(f"rlwatch overall: {tw.fa} false alarm(s) in {tw.healthy_steps} healthy steps = "
              f"{fmt(tw.fa_per_1k)}/1k; by detector: "
              f"{', '.join(f'{d} {c}' for d, c in tw.fa_by.most_common()) or 'none'}")  # fmt: skip
    print()
    print("counting detectors (rlkeel): " + "; ".join(
        f"{s}: {', '.join(SCENARIOS[s])}" for s in args.scenarios))  # fmt: skip
    print(f"targets: recall >= {RECALL_TARGET}, <= {FA_TARGET:g} false alarm per 1,000 healthy "
          "steps, >= rlwatch's recall with fewer false alarms on every shared scenario")
    if not tot.fa_per_1k <= FA_TARGET:
        misses.append(f"overall FA {fmt(tot.fa_per_1k)}/1k > {FA_TARGET:g}")
    print("result: " + ("all targets met" if not misses else "MISSED — " + "; ".join(misses)))


if __name__ == "__main__":
    main()
