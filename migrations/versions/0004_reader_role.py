"""read-only role for dashboards

`rlkeel_reader` (NOLOGIN) may read the tables Grafana charts — never API keys, webhook secrets
or detector state. Log in as a member of it: `rlkeel db reader-login NAME` (password from
RLKEEL_READER_PASSWORD). Roles are cluster-wide, so the role is created once and shared by every
rlkeel database in the cluster; downgrade revokes this database's grants and drops the role only
when nothing else in the cluster still refers to it. A migration that adds a table to chart must
grant it too. No-op on SQLite.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The SQL is literal (no string building, tests/server/test_sql_safety.py): the role is
# `rlkeel_reader`; it reads runs, steps, samples, findings, commands, command_events,
# audit_log and webhook_deliveries. Database and schema names are quoted by format('%I').
UPGRADE = """
    DO $$
    BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rlkeel_reader') THEN
        BEGIN
          CREATE ROLE rlkeel_reader NOLOGIN;
        EXCEPTION
          WHEN duplicate_object OR unique_violation THEN NULL;  -- created concurrently
          WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot create role rlkeel_reader: dashboards need a DBA to create it';
            RETURN;
        END;
      END IF;
      
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO rlkeel_reader', current_database());
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO rlkeel_reader', current_schema());
        EXECUTE format('GRANT SELECT ON %1$I.runs, %1$I.steps, %1$I.samples, %1$I.findings, %1$I.commands, %1$I.command_events, %1$I.audit_log, %1$I.webhook_deliveries TO rlkeel_reader', current_schema());
    
    END $$
    """

DOWNGRADE = """
    DO $$
    BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rlkeel_reader') THEN
        RETURN;
      END IF;
      
        EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM rlkeel_reader', current_database());
        EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM rlkeel_reader', current_schema());
        EXECUTE format('REVOKE SELECT ON %1$I.runs, %1$I.steps, %1$I.samples, %1$I.findings, %1$I.commands, %1$I.command_events, %1$I.audit_log, %1$I.webhook_deliveries FROM rlkeel_reader', current_schema());
    
      -- Other rlkeel databases in the cluster may still grant to the role: keep it for them.
      IF NOT EXISTS (SELECT FROM pg_shdepend d JOIN pg_roles r ON d.refobjid = r.oid
                     WHERE r.rolname = 'rlkeel_reader' AND d.refclassid = 'pg_authid'::regclass) THEN
        BEGIN
          DROP ROLE rlkeel_reader;
        EXCEPTION WHEN dependent_objects_still_exist OR undefined_object THEN NULL;
        END;
      END IF;
    END $$
    """


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # A user without CREATEROLE (a managed database) gets a notice instead of a failure: a DBA
    # can create the role, then `rlkeel db downgrade 0003 && rlkeel db upgrade`.
    op.execute(UPGRADE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(DOWNGRADE)
