/// The time of collectives on `P` ranks from two numbers: `α`, the latency of one message
/// step, and `β`, the bandwidth of a rank's link (Hockney's model, with the algorithms MPI
/// libraries use):
///
///     all-reduce of m bytes:  min( ⌈log₂P⌉·(α + m/β),                      recursive doubling (small m)
///                                  2⌈log₂P⌉·α + 2(P−1)/P · m/β )           reduce-scatter + all-gather (large m)
///     all-gather of m bytes a rank:  ⌈log₂P⌉·α + (P−1)·m/β                 recursive doubling / Bruck
///     reduce-scatter of m bytes:     ⌈log₂P⌉·α + (P−1)/P · m/β             recursive halving
///
/// (a reduce-scatter of `m` and an all-gather of `m/P` a rank make the large-message all-reduce).
///
/// The bandwidth term of the large-message all-reduce is a ring's, `2(P−1)/P·m` bytes through
/// each link — so `β` is the bus bandwidth `anticollapse bench comm` fits; its latency term is
/// logarithmic (Rabenseifner's recursive halving; a plain ring would pay `2(P−1)·α`). On two
/// ranks every all-reduce is `α + m/β`, which is what the fit on two ranks measures.
public struct CollectiveModel: Sendable, Codable, Equatable {
    /// α, seconds of one message step.
    public var latency: Double
    /// β, bytes a second through one rank's link.
    public var bandwidth: Double

    public init(latency: Double, bandwidth: Double) {
        self.latency = latency
        self.bandwidth = bandwidth
    }

    /// `⌈log₂ P⌉`, the message steps of a recursive doubling on `worldSize` ranks.
    public static func steps(worldSize: Int) -> Int {
        worldSize <= 1 ? 0 : Int.bitWidth - (worldSize - 1).leadingZeroBitCount
    }

    /// Seconds of an all-reduce of `bytes` on `worldSize` ranks (0 on one rank).
    public func allReduce(bytes: Double, worldSize: Int) -> Double {
        guard worldSize > 1 else { return 0 }
        let steps = Double(CollectiveModel.steps(worldSize: worldSize)), p = Double(worldSize)
        let doubling = steps * (latency + bytes / bandwidth)
        let halving = 2 * steps * latency + 2 * (p - 1) / p * bytes / bandwidth
        return min(doubling, halving)
    }

    /// Seconds of a reduce-scatter of `bytes` (each rank keeps a `1/P` block of the reduction)
    /// on `worldSize` ranks (0 on one rank).
    public func reduceScatter(bytes: Double, worldSize: Int) -> Double {
        guard worldSize > 1 else { return 0 }
        let p = Double(worldSize)
        return Double(CollectiveModel.steps(worldSize: worldSize)) * latency + (p - 1) / p * bytes / bandwidth
    }

    /// Seconds of an all-gather of `bytesPerRank` from every rank on `worldSize` ranks (0 on one rank).
    public func allGather(bytesPerRank: Double, worldSize: Int) -> Double {
        guard worldSize > 1 else { return 0 }
        return Double(CollectiveModel.steps(worldSize: worldSize)) * latency + Double(worldSize - 1) * bytesPerRank / bandwidth
    }
}
