"""The LLM planner: engine, prompts, tuning, tool schemas and the operators' API."""
