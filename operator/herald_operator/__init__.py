"""operator component of herald."""
