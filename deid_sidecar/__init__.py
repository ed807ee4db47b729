"""deid-sidecar: anonymize faces and license plates in live camera streams and video files."""

__version__ = "0.1.0"
