// The Tensor module. (Filled in by its issue.)
