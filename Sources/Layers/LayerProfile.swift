import Foundation

/// The kinds of layer work that `bench step` times separately.
public enum LayerPhase: Int, CaseIterable, Sendable, Codable {
    /// A convolution's output: im2col and the product with the weights.
    case convForward
    /// A convolution's weight (and bias) gradient: im2col again and `dW += dY · colᵀ`.
    case convWeightGradient
    /// A convolution's input gradient: `dcol = Wᵀ · dY` and col2im.
    case convInputGradient
    /// Batch norm, forward and backward (its all-reduces included).
    case batchNorm
    /// Average pooling, global average pooling.
    case pooling
    /// ReLU and the residual sums.
    case elementwise
    /// The matrix products of `Linear` layers, forward and backward (a transformer's QKV,
    /// output and MLP projections).
    case linear
    /// Attention between the projections: the per-(sample, head) score and value products
    /// and the softmax, forward and backward.
    case attention
    /// Layer norm, forward and backward.
    case layerNorm
    /// GELU and SiLU.
    case smoothActivation

    /// The name `bench step` prints.
    public var name: String {
        switch self {
        case .convForward: return "conv forward"
        case .convWeightGradient: return "conv weight gradient"
        case .convInputGradient: return "conv input gradient"
        case .batchNorm: return "batch norm"
        case .pooling: return "pooling"
        case .elementwise: return "ReLU + residual"
        case .linear: return "linear"
        case .attention: return "attention core"
        case .layerNorm: return "layer norm"
        case .smoothActivation: return "GELU/SiLU"
        }
    }
}

/// Time spent in each ``LayerPhase`` since the last ``reset()``, taken only while
/// ``enabled``: the per-layer-type phases of `bench step`.
///
/// One profile per process (``shared``); only `bench step` turns it on, with one rank a process.
/// Off, a layer pays one load and branch per call.
public final class LayerProfile: @unchecked Sendable {
    // Unchecked Sendable: written by the one training step of the process that enabled it;
    // in-process thread ranks (tests) never enable it.
    /// The process's profile.
    public static let shared = LayerProfile()

    /// Whether layers take times (default false).
    public var enabled = false
    private var nanoseconds = [UInt64](repeating: 0, count: LayerPhase.allCases.count)

    init() {}

    /// A start time for ``add(_:since:)``, or 0 when off.
    @inline(__always)
    public func now() -> UInt64 { enabled ? DispatchTime.now().uptimeNanoseconds : 0 }

    /// Adds the time since `start` (from ``now()``) to `phase`.
    @inline(__always)
    public func add(_ phase: LayerPhase, since start: UInt64) {
        guard enabled else { return }
        nanoseconds[phase.rawValue] &+= DispatchTime.now().uptimeNanoseconds &- start
    }

    /// Zeroes every phase.
    public func reset() {
        for i in nanoseconds.indices { nanoseconds[i] = 0 }
    }

    /// Milliseconds in `phase` since the last reset.
    public func milliseconds(_ phase: LayerPhase) -> Double { Double(nanoseconds[phase.rawValue]) * 1e-6 }
}
