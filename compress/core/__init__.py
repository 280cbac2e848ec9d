"""The bottom of the toolchain: errors with exit codes, atomic file io, the console. No project imports."""
