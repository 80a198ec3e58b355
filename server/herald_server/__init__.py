"""server component of herald."""
