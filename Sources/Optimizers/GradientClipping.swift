import Tensor
import Layers

extension ParameterStore {
    /// The global L2 norm of the gradients: `√(Σ over every parameter of Σ g²)`, accumulated in
    /// `Double` over the store's whole flat gradient buffer.
    ///
    /// Equals PyTorch's `total_norm` in `clip_grad_norm_` (the norm of the per-parameter norms).
    /// After `GradientSynchronizer.allReduceGradients()` the gradients, and so this norm, are the
    /// same on every rank.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func gradientNorm() -> Double {
        gradients.squaredNorm().squareRoot()
    }

    /// Scales every gradient so that the global norm is at most `maxNorm`; returns the norm
    /// before clipping: PyTorch's `torch.nn.utils.clip_grad_norm_(parameters, max_norm)`.
    ///
    ///     total = ‖g‖₂ over all parameters          (in Double)
    ///     c = maxNorm / (total + 1e-6)
    ///     if c < 1: g = g · c
    ///
    /// As in PyTorch, the clipped norm is `maxNorm · total / (total + 1e-6)`, just under
    /// `maxNorm`. Call it after the gradients are synchronised, so every rank clips the same
    /// gradients by the same factor.
    ///
    /// If the norm is not finite, the gradients are left as they are and the norm is returned,
    /// so the caller can skip the step (PyTorch would multiply by NaN or 0).
    ///
    /// - Parameter maxNorm: the largest global norm allowed, > 0.
    /// - Returns: the global norm before clipping.
    @discardableResult
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func clipGradientNorm(maxNorm: Double) -> Double {
        precondition(maxNorm > 0, "clipGradientNorm: maxNorm \(maxNorm) must be positive")
        let total = gradientNorm()
        if let coefficient = Self.clippingFactor(norm: total, maxNorm: maxNorm) { gradients.scale(by: Scalar(coefficient)) }
        return total
    }

    /// The factor ``clipGradientNorm(maxNorm:)`` scales the gradients by when their global norm
    /// is `total`: `maxNorm / (total + 1e-6)` when below 1; nil when the gradients stay as they
    /// are (a small or non-finite norm). The sharded step clips its share by the same factor.
    public static func clippingFactor(norm total: Double, maxNorm: Double) -> Double? {
        guard total.isFinite else { return nil }
        let coefficient = maxNorm / (total + 1e-6)
        return coefficient < 1 ? coefficient : nil
    }
}
