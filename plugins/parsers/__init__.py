"""Built-in tool-call parsers (Llama 3 JSON, Qwen/Hermes tags, Mistral) and the think-tag reasoning parser."""
