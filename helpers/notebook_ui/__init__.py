"""What the notebooks show: tables, progress, the apply confirmation."""
