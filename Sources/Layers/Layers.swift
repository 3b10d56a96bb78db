// The Layers module. (Filled in by its issue.)
