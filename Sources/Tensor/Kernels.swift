/// Element-wise and reduction kernels. Reductions accumulate in `Double`, whatever the
/// tensor's scalar type, so that sums over a global batch do not lose precision in `Float`.
extension Tensor {
    // MARK: Reductions (accumulated in Double)

    /// The sum of all elements.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func sum() -> Double {
        withUnsafeBufferPointer { p in
            var s = 0.0
            for x in p { s += Double(x) }
            return s
        }
    }

    /// The sum of squares of all elements.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func squaredNorm() -> Double {
        withUnsafeBufferPointer { p in
            var s = 0.0
            for x in p { let d = Double(x); s += d * d }
            return s
        }
    }

    /// The dot product with a tensor of the same count.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    @inlinable public func dot(_ other: Tensor) -> Double {
        precondition(other.count == count, "dot of \(shape) and \(other.shape)")
        return withUnsafeBufferPointer { a in
            other.withUnsafeBufferPointer { b in
                var s = 0.0
                for i in 0..<count { s += Double(a[i]) * Double(b[i]) }
                return s
            }
        }
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
