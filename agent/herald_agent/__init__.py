"""agent component of herald."""
