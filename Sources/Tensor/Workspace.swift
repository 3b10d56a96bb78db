/// Named buffers reused from one call to the next: a kernel asks for
/// `workspace.tensor("gram", [d, d])` and gets the same storage every call (allocated on the
/// first, and again only when a larger one is needed), so a steady training step allocates no
/// tensor storage.
///
/// A workspace belongs to one caller on one thread (one rank's training step); buffers of
/// different names are distinct, and a buffer is valid until the next request of its name.
public final class Workspace: @unchecked Sendable {
    // Unchecked Sendable: used by one rank's step at a time (see above).
    private struct Key: Hashable {
        let name: String
        let index: Int
        let scalar: ObjectIdentifier
    }
    private var storages: [Key: AnyObject] = [:]

    public init() {}

    /// The buffer `name` (the `index`-th of that name: one a view, say) shaped `shape`,
    /// zero-filled when `zeroed` (default true).
    public func tensor<Scalar: TensorScalar>(_ name: String, index: Int = 0, _ shape: [Int], zeroed: Bool = true,
                                             as _: Scalar.Type = Scalar.self) -> Tensor<Scalar> {
        let key = Key(name: name, index: index, scalar: ObjectIdentifier(Scalar.self))
        let count = shape.reduce(1, *)
        let storage: TensorStorage<Scalar>
        if let existing = storages[key] as? TensorStorage<Scalar>, existing.capacity >= count {
            storage = existing
        } else {
            storage = TensorStorage<Scalar>(capacity: count)
            storages[key] = storage
            return Tensor(shape: shape, storage: storage, offset: 0)
        }
        let tensor = Tensor(shape: shape, storage: storage, offset: 0)
        if zeroed { tensor.fill(0) }
        return tensor
    }

    /// A copy of `source` in the buffer `name`.
    public func copy<Scalar: TensorScalar>(_ source: Tensor<Scalar>, into name: String, index: Int = 0) -> Tensor<Scalar> {
        let tensor: Tensor<Scalar> = self.tensor(name, index: index, source.shape, zeroed: false)
        tensor.copy(from: source)
        return tensor
    }
}
