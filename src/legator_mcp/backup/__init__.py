"""Online, verified database backups with age-based cleanup."""
