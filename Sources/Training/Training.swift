// The Training module. (Filled in by its issue.)
