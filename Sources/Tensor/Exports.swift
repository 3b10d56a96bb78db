// The elementary functions (`Scalar.exp`, `.log`, `.cos`, `.erf`, …) that generic kernels use
// come from swift-numerics' `Real`; every user of `Tensor` sees them.
@_exported import RealModule
