"""One camera's pipeline (source -> detect -> track/policy -> anonymize -> encode), and file mode."""
