import Synchronization

/// Counts of tensor storage allocations in this process: what the zero-allocation tests of a
/// steady training step read (a step that reuses its buffers leaves them unchanged).
public enum TensorAllocations {
    static let count = Atomic<Int>(0)
    static let bytes = Atomic<Int>(0)

    /// Storage allocations so far, and their bytes.
    public static var snapshot: (count: Int, bytes: Int) {
        (count.load(ordering: .relaxed), bytes.load(ordering: .relaxed))
    }

    @usableFromInline
    static func record(bytes byteCount: Int) {
        count.add(1, ordering: .relaxed)
        bytes.add(byteCount, ordering: .relaxed)
    }
}

/// Storage of a tensor: one 64-byte-aligned allocation, zero-initialised, freed on `deinit`.
///
/// Tensors are views into storage, so a layer can keep parameters, gradients and activations
/// in a few large buffers and hand out named views of them (llm.c style), and a collective can
/// reduce all gradients in one call.
///
/// The elements can move once the views exist (``move(to:owner:)``): into memory the ranks of
/// a node share, say, where the peers read a gradient without a copy. Every view follows.
public final class TensorStorage<Scalar: TensorScalar>: @unchecked Sendable {
    // Unchecked Sendable: the storage is shared like a PyTorch tensor's; callers order writes
    // (a training step is single-threaded per rank).
    @usableFromInline private(set) var base: UnsafeMutablePointer<Scalar>
    /// The number of elements allocated.
    public let capacity: Int
    /// What keeps `base` alive when the storage has moved into memory it does not own; nil while
    /// `base` is its own allocation.
    private var owner: AnyObject?

    /// Allocates `capacity` zeros.
    public init(capacity: Int) {
        precondition(capacity >= 0, "negative tensor capacity \(capacity)")
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(capacity, 1) * MemoryLayout<Scalar>.stride,
                                                   alignment: 64)
        TensorAllocations.record(bytes: max(capacity, 1) * MemoryLayout<Scalar>.stride)
        self.capacity = capacity
        base = raw.bindMemory(to: Scalar.self, capacity: max(capacity, 1))
        base.initialize(repeating: 0, count: max(capacity, 1))
    }

    /// Copies the elements into `memory` (room for ``capacity`` elements, 64-byte aligned, kept
    /// alive by `owner`) and uses it from now on, freeing its own allocation; every view of the
    /// storage reads and writes there. Nobody may hold a pointer into the storage meanwhile.
    public func move(to memory: UnsafeMutablePointer<Scalar>, owner: AnyObject) {
        precondition(Int(bitPattern: memory) % 64 == 0, "TensorStorage.move: memory must be 64-byte aligned")
        memory.update(from: base, count: capacity)
        if self.owner == nil { base.deallocate() }
        base = memory
        self.owner = owner
    }

    /// Uses `memory`, which already holds this storage's elements (another rank's copy of the
    /// same values, on the node's shared memory), from now on, kept alive by `owner`; frees its
    /// own allocation. Every view of the storage reads and writes there.
    public func adopt(_ memory: UnsafeMutablePointer<Scalar>, owner: AnyObject) {
        if self.owner == nil { base.deallocate() }
        base = memory
        self.owner = owner
    }

    deinit { if owner == nil { base.deallocate() } }
}

/// A dense row-major tensor of `Float` or `Double`: a shape and a view into shared storage.
///
/// A `Tensor` has reference semantics, like a PyTorch tensor: copies of the value share the
/// elements, and writing through one is seen through the others. `copy()` makes a new storage.
/// Matrix routines treat a tensor of shape `[n, d1, d2, …]` as an `n × (d1·d2·…)` matrix.
public struct Tensor<Scalar: TensorScalar>: @unchecked Sendable {
    /// The extent of each dimension.
    public let shape: [Int]
    /// The number of elements, the product of `shape`.
    public let count: Int
    @usableFromInline let storage: TensorStorage<Scalar>
    @usableFromInline let offset: Int

    /// A tensor of zeros.
    public init(zeros shape: [Int]) {
        let count = Tensor.elementCount(shape)
        self.init(shape: shape, storage: TensorStorage(capacity: count), offset: 0)
    }

    /// A tensor of `value`s.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public init(shape: [Int], repeating value: Scalar) {
        self.init(zeros: shape)
        fill(value)
    }

    /// A tensor holding `scalars` in row-major order.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public init(shape: [Int], scalars: [Scalar]) {
        precondition(Tensor.elementCount(shape) == scalars.count,
                     "shape \(shape) holds \(Tensor.elementCount(shape)) elements, given \(scalars.count)")
        self.init(zeros: shape)
        scalars.withUnsafeBufferPointer { source in
            storage.base.update(from: source.baseAddress!, count: scalars.count)
        }
    }

    /// Whether this tensor views all of its storage (then ``moveStorage(to:owner:)`` may move it).
    public var spansStorage: Bool { offset == 0 && count == storage.capacity }

    /// Moves the storage this tensor spans, and with it every view of it, into `memory` (see
    /// ``TensorStorage/move(to:owner:)``).
    public func moveStorage(to memory: UnsafeMutablePointer<Scalar>, owner: AnyObject) {
        precondition(spansStorage, "moveStorage: the tensor views \(count) of \(storage.capacity) elements at \(offset)")
        storage.move(to: memory, owner: owner)
    }

    /// Points the storage this tensor spans, and every view of it, at `memory`, which already
    /// holds the same elements (see ``TensorStorage/adopt(_:owner:)``).
    public func adoptStorage(_ memory: UnsafeMutablePointer<Scalar>, owner: AnyObject) {
        precondition(spansStorage, "adoptStorage: the tensor views \(count) of \(storage.capacity) elements at \(offset)")
        storage.adopt(memory, owner: owner)
    }

    /// A view of `shape` into `storage` starting at element `offset`.
    public init(shape: [Int], storage: TensorStorage<Scalar>, offset: Int) {
        let count = Tensor.elementCount(shape)
        precondition(offset >= 0 && offset + count <= storage.capacity,
                     "view of \(count) elements at \(offset) exceeds storage of \(storage.capacity)")
        self.shape = shape
        self.count = count
        self.storage = storage
        self.offset = offset
    }

    @usableFromInline static func elementCount(_ shape: [Int]) -> Int {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative extent in shape \(shape)")
        return shape.reduce(1, *)
    }

    // MARK: Shape

    /// The number of dimensions.
    public var rank: Int { shape.count }
    /// The extent of the first dimension (1 for a scalar tensor).
    public var rowCount: Int { shape.first ?? 1 }
    /// The number of elements in one row: the product of all dimensions but the first.
    public var columnCount: Int { shape.isEmpty ? 1 : shape.dropFirst().reduce(1, *) }

    /// A view of the same elements with another shape of the same count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        precondition(Tensor.elementCount(newShape) == count, "cannot reshape \(shape) to \(newShape)")
        return Tensor(shape: newShape, storage: storage, offset: offset)
    }

    /// A view of the rows `range` (along the first dimension).
    public func rows(_ range: Range<Int>) -> Tensor {
        precondition(range.lowerBound >= 0 && range.upperBound <= rowCount, "rows \(range) of \(shape)")
        var newShape = shape
        newShape[0] = range.count
        return Tensor(shape: newShape, storage: storage, offset: offset + range.lowerBound * columnCount)
    }

    /// Whether `other` views exactly the same elements.
    public func isSameView(as other: Tensor) -> Bool {
        storage === other.storage && offset == other.offset && count == other.count
    }

    // MARK: Elements

    /// Calls `body` with the elements, in row-major order.
    @inlinable
    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Scalar>) throws -> R) rethrows -> R {
        try body(UnsafeBufferPointer(start: storage.base + offset, count: count))
    }

    /// Calls `body` with the elements to write, in row-major order.
    @inlinable
    public func withUnsafeMutableBufferPointer<R>(_ body: (UnsafeMutableBufferPointer<Scalar>) throws -> R) rethrows -> R {
        try body(UnsafeMutableBufferPointer(start: storage.base + offset, count: count))
    }

    /// The element at a multi-dimensional index.
    public subscript(_ index: Int...) -> Scalar {
        get { storage.base[offset + flatIndex(index)] }
        nonmutating set { storage.base[offset + flatIndex(index)] = newValue }
    }

    /// The element at a flat (row-major) index.
    @inlinable
    public subscript(flat index: Int) -> Scalar {
        get {
            precondition(index >= 0 && index < count, "flat index \(index) out of \(count)")
            return storage.base[offset + index]
        }
        nonmutating set {
            precondition(index >= 0 && index < count, "flat index \(index) out of \(count)")
            storage.base[offset + index] = newValue
        }
    }

    private func flatIndex(_ index: [Int]) -> Int {
        precondition(index.count == shape.count, "index \(index) for shape \(shape)")
        var flat = 0
        for (i, extent) in zip(index, shape) {
            precondition(i >= 0 && i < extent, "index \(index) out of shape \(shape)")
            flat = flat * extent + i
        }
        return flat
    }

    /// The elements as an array, in row-major order.
    public var scalars: [Scalar] { withUnsafeBufferPointer { Array($0) } }

    /// Sets every element to `value`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func fill(_ value: Scalar) {
        withUnsafeMutableBufferPointer { $0.update(repeating: value) }
    }

    /// Copies the elements of `source` (same count) into this view.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func copy(from source: Tensor) {
        precondition(source.count == count, "copy of \(source.shape) into \(shape)")
        withUnsafeMutableBufferPointer { target in
            source.withUnsafeBufferPointer { target.baseAddress!.update(from: $0.baseAddress!, count: count) }
        }
    }

    /// A copy in new storage.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func copy() -> Tensor {
        let result = Tensor(zeros: shape)
        result.copy(from: self)
        return result
    }

    /// A copy converted to another scalar type.
    @_specialize(where Scalar == Float, Other == Double)
    @_specialize(where Scalar == Double, Other == Float)
    @_specialize(where Scalar == Float, Other == Float)
    @_specialize(where Scalar == Double, Other == Double)
    public func converted<Other: TensorScalar>(to _: Other.Type = Other.self) -> Tensor<Other> {
        converted(into: Tensor<Other>(zeros: shape))
    }

    /// ``converted(to:)`` written into `result` (of the same element count), which is returned.
    @discardableResult
    public func converted<Other: TensorScalar>(into result: Tensor<Other>) -> Tensor<Other> {
        precondition(result.count == count, "convert \(count) elements into \(result.count)")
        withUnsafeBufferPointer { source in
            result.withUnsafeMutableBufferPointer { target in
                for i in 0..<count { target[i] = Other(source[i]) }
            }
        }
        return result
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let shown = scalars.prefix(8).map { "\($0)" }.joined(separator: ", ")
        return "Tensor<\(Scalar.self)>\(shape)[\(shown)\(count > 8 ? ", …" : "")]"
    }
}
