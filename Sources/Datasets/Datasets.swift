// The Datasets module. (Filled in by its issue.)
