/// Element-wise and reduction kernels. Reductions accumulate in `Double`, whatever the
/// tensor's scalar type, so that sums over a global batch do not lose precision in `Float`.
extension Tensor {
    // MARK: Reductions (accumulated in Double)

    /// The sum of all elements.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func sum() -> Double {
        withUnsafeBufferPointer { p in Tensor.laneSum(p.count) { Double(p[$0]) } }
    }

    /// The column of the largest element of row `row` of a matrix, the lowest on a tie (a
    /// classifier's prediction from its logits or probabilities).
    @inlinable public func argmax(ofRow row: Int) -> Int {
        withUnsafeBufferPointer { p in
            let c = columnCount, base = row * c
            var best = 0
            for j in 1..<max(c, 1) where p[base + j] > p[base + best] { best = j }
            return best
        }
    }

    /// The sum of squares of all elements.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func squaredNorm() -> Double {
        withUnsafeBufferPointer { p in Tensor.laneSum(p.count) { let x = Double(p[$0]); return x * x } }
    }

    /// The dot product with a tensor of the same count.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func dot(_ other: Tensor) -> Double {
        precondition(other.count == count, "dot of \(shape) and \(other.shape)")
        return withUnsafeBufferPointer { a in
            other.withUnsafeBufferPointer { b in Tensor.laneSum(count) { Double(a[$0]) * Double(b[$0]) } }
        }
    }

    /// `Σ_{i < count} term(i)` in `Double`, over 8 interleaved partial sums (element `i` goes to
    /// lane `i mod 8`) added pairwise at the end.
    ///
    /// One running sum is a chain of dependent additions, one per floating-point add latency
    /// (4 cycles): 8 M elements take 13 ms at 2.6 GHz. Eight independent lanes let the adds
    /// pipeline and vectorise, so a pass runs at memory speed. The order of additions is fixed
    /// by `count` alone, so the result is deterministic.
    @inlinable @inline(__always)
    public static func laneSum(_ count: Int, _ term: (Int) -> Double) -> Double {
        var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0, s5 = 0.0, s6 = 0.0, s7 = 0.0
        var i = 0
        while i + 8 <= count {
            s0 += term(i); s1 += term(i + 1); s2 += term(i + 2); s3 += term(i + 3)
            s4 += term(i + 4); s5 += term(i + 5); s6 += term(i + 6); s7 += term(i + 7)
            i += 8
        }
        var tail = 0.0
        while i < count { tail += term(i); i += 1 }
        return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + tail
    }

    /// The sum of each column of the `rowCount × columnCount` matrix, in `Double`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func columnSums() -> [Double] {
        var sums = [Double](repeating: 0, count: columnCount)
        addColumnSums(into: &sums)
        return sums
    }

    /// Adds the sum of each column to `sums` (which has `columnCount` elements).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func addColumnSums(into sums: inout [Double]) {
        let n = rowCount, d = columnCount
        precondition(sums.count == d, "column sums of \(shape) into \(sums.count)")
        withUnsafeBufferPointer { p in
            sums.withUnsafeMutableBufferPointer { s in
                for i in 0..<n {
                    let row = p.baseAddress! + i * d
                    for j in 0..<d { s[j] += Double(row[j]) }
                }
            }
        }
    }

    /// The largest absolute value (0 for an empty tensor).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func maxAbs() -> Scalar {
        withUnsafeBufferPointer { p in p.reduce(0) { Swift.max($0, Swift.abs($1)) } }
    }

    /// Whether every element is finite.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func allFinite() -> Bool {
        withUnsafeBufferPointer { p in p.allSatisfy { $0.isFinite } }
    }

    // MARK: Element-wise, in place

    /// `self = alpha · x + self` (BLAS `axpy`).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func add(_ x: Tensor, scaledBy alpha: Scalar = 1) {
        precondition(x.count == count, "add \(x.shape) to \(shape)")
        withUnsafeMutableBufferPointer { y in
            x.withUnsafeBufferPointer { x in
                for i in 0..<count { y[i] += alpha * x[i] }
            }
        }
    }

    /// `self = alpha · self`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func scale(by alpha: Scalar) {
        withUnsafeMutableBufferPointer { y in for i in y.indices { y[i] *= alpha } }
    }

    /// Applies `transform` to every element.
    @inlinable public func apply(_ transform: (Scalar) -> Scalar) {
        withUnsafeMutableBufferPointer { y in for i in y.indices { y[i] = transform(y[i]) } }
    }

    /// Adds `vector` (of `columnCount` elements) to every row.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func addToEachRow(_ vector: Tensor) {
        let n = rowCount, d = columnCount
        precondition(vector.count == d, "add a vector of \(vector.count) to rows of \(shape)")
        withUnsafeMutableBufferPointer { y in
            vector.withUnsafeBufferPointer { v in
                for i in 0..<n {
                    let row = y.baseAddress! + i * d
                    for j in 0..<d { row[j] += v[j] }
                }
            }
        }
    }

    /// The largest absolute element-wise difference from `other` (same count).
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func maxAbsDifference(_ other: Tensor) -> Double {
        precondition(other.count == count, "compare \(shape) with \(other.shape)")
        return withUnsafeBufferPointer { a in
            other.withUnsafeBufferPointer { b in
                var m = 0.0
                for i in 0..<count { m = Swift.max(m, Swift.abs(Double(a[i]) - Double(b[i]))) }
                return m
            }
        }
    }
}
