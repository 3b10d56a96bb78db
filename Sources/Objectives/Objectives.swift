// The Objectives module. (Filled in by its issue.)
