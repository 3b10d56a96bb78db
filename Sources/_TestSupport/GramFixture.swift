import Tensor

/// A global batch on which VICReg takes its Gram form (`2N < D`), shared by the in-process
/// tests and the `MPIHarness objectives` scenario: two views of ``rows`` × ``dimension``,
/// normal draws offset by 300 (the Gram form must centre on the global mean first).
public enum VICRegGramFixture {
    public static let rows = 12
    public static let dimension = 40

    /// The two views, row-major.
    public static func views() -> [[Double]] {
        (0..<2).map { v in
            (randomTensor([rows, dimension], seed: 11, stream: UInt64(v)) as Tensor<Double>).scalars.map { $0 + 300 }
        }
    }
}
