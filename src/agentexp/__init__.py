"""agentexp: autonomous, LLM-driven CNN experimentation with MLflow as the system of record."""
