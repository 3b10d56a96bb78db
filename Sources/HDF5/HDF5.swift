// The HDF5 module. (Filled in by its issue.)
