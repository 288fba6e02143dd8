"""rlkeel: a training-health service with auto-intervention for RL fine-tuning of LMs."""
