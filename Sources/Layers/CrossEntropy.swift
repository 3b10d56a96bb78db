import Tensor

/// The softmax cross-entropy of logits against integer labels, as a forward/backward pair.
///
///     p_ic = exp(z_ic − max_c z_ic) / Σ_c' exp(z_ic' − max_c z_ic)
///     L    = −(1/B) Σ_i log p_i,y_i
///     ∂L/∂z_ic = (p_ic − [c = y_i]) / B
///
/// Sums are accumulated in `Double`; the forward pass saves the probabilities for the backward.
public enum SoftmaxCrossEntropy {
    /// The mean loss over the rows of `logits` `(B, C)`; writes the softmax into
    /// `probabilities` `(B, C)` for the backward pass.
    ///
    /// - Parameter labels: one a row, each in `0 ..< C`.
    public static func forward<Scalar: TensorScalar>(logits: Tensor<Scalar>, labels: [Int],
                                                     probabilities: Tensor<Scalar>) -> Double {
        let b = logits.rowCount, c = logits.columnCount
        precondition(labels.count == b && probabilities.count == b * c,
                     "cross-entropy of \(logits.shape) with \(labels.count) labels into \(probabilities.shape)")
        var loss = 0.0
        logits.withUnsafeBufferPointer { z in
            probabilities.withUnsafeMutableBufferPointer { p in
                for i in 0..<b {
                    precondition(labels[i] >= 0 && labels[i] < c, "label \(labels[i]) outside 0..<\(c)")
                    var largest = -Double.infinity
                    for j in 0..<c { largest = max(largest, Double(z[i * c + j])) }
                    var sum = 0.0
                    for j in 0..<c { sum += Double.exp(Double(z[i * c + j]) - largest) }
                    let logSum = Double.log(sum)
                    for j in 0..<c { p[i * c + j] = Scalar(Double.exp(Double(z[i * c + j]) - largest) / sum) }
                    loss -= Double(z[i * c + labels[i]]) - largest - logSum
                }
            }
        }
        return b > 0 ? loss / Double(b) : 0
    }

    /// Writes `∂L/∂logits = (p − onehot(y)) / N` into `logitsGradient` `(B, C)`.
    ///
    /// - Parameter batchSize: `N`, the rows the loss averages over: these `B` rows by default,
    ///   the global batch when the rows are one rank's part of it.
    public static func backward<Scalar: TensorScalar>(probabilities: Tensor<Scalar>, labels: [Int],
                                                      into logitsGradient: Tensor<Scalar>, batchSize: Int? = nil) {
        let b = probabilities.rowCount, c = probabilities.columnCount
        precondition(labels.count == b && logitsGradient.count == b * c, "cross-entropy backward shapes")
        let scale = Scalar(1 / Double(max(batchSize ?? b, 1)))
        probabilities.withUnsafeBufferPointer { p in
            logitsGradient.withUnsafeMutableBufferPointer { g in
                for i in 0..<b {
                    for j in 0..<c { g[i * c + j] = p[i * c + j] * scale }
                    g[i * c + labels[i]] -= scale
                }
            }
        }
    }
}
