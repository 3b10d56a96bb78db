// The Optimizers module. (Filled in by its issue.)
