// Shared helpers of the test targets: tolerance assertions, temporary files, launching
// real `mpirun` jobs. Not part of the product.
@_exported import Tensor
@_exported import Communication
