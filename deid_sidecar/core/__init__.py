"""Pure data types and geometry: no I/O, no wiring."""
