// The HDF5 library as a whole: the one lock that serialises every call into it, and the
// error type that every failed call becomes.
//
// libhdf5 may be called from several threads only when built with --enable-threadsafe
// (Debian's 1.10.8 package is; other builds are not), so no two threads enter it at once:
// every public entry point of this module (and every wrapper's `deinit`) runs inside
// `HDF5Library.locked`. The lock is recursive so entry points may call one another.
import CHDF5
import Foundation

/// Process-wide access to the HDF5 C library.
public enum HDF5Library {
    /// The one lock every HDF5 call is made under.
    private static let lock = NSRecursiveLock()

    /// How many `locked` calls the thread holding `lock` is inside; guarded by `lock`.
    nonisolated(unsafe) private static var depth = 0

    /// Runs `body` while holding the global HDF5 lock.
    ///
    /// The outermost call also turns off HDF5's own printing of its error stack to stderr
    /// (failures surface as thrown `HDF5Error`s instead). That setting is per thread when
    /// libhdf5 is built thread-safe, as Debian's is, so it is renewed on every entry.
    /// - Parameter body: Code that calls into HDF5; it may call `locked` again.
    /// - Returns: What `body` returns.
    public static func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        if depth == 0 { shim_H5_silence_errors() }
        depth += 1
        defer { depth -= 1 }
        return try body()
    }
}

/// A failed HDF5 operation, naming the file, the object inside it and the C call that failed.
///
/// Its `description` reads like `cannot open dataset "/x" in /data/a.h5: H5Dopen2 failed
/// (not a dataset)`, where the parenthesis is HDF5's own most specific message.
public struct HDF5Error: Error, CustomStringConvertible, Sendable, Equatable {
    /// What kind of failure this is, for callers that want to react to it.
    public enum Kind: Sendable, Equatable {
        /// The file does not exist.
        case noSuchFile
        /// The file exists but is not an HDF5 file.
        case notHDF5File
        /// The file or object already exists and overwriting was not asked for.
        case alreadyExists
        /// The object (group, dataset or attribute) does not exist.
        case notFound
        /// The file has been closed.
        case closed
        /// The arguments do not fit the object (shape, row index, value count, type).
        case invalidArgument
        /// A C call returned an error code.
        case callFailed
    }

    /// What kind of failure this is.
    public let kind: Kind
    /// What was being done, e.g. `"open dataset"`.
    public let operation: String
    /// The path of the HDF5 file on disk.
    public let file: String
    /// The path of the object inside the file, if the operation was about one.
    public let object: String?
    /// Why it failed, e.g. `"H5Dopen2 failed"` or `"no such file"`.
    public let reason: String
    /// HDF5's most specific error-stack message, if it had one.
    public let detail: String?

    /// Creates an error; see the properties for the meaning of each argument.
    public init(_ kind: Kind, operation: String, file: String, object: String?, reason: String,
                detail: String? = nil) {
        self.kind = kind
        self.operation = operation
        self.file = file
        self.object = object
        self.reason = reason
        self.detail = detail
    }

    public var description: String {
        let target = object.map { "\"\($0)\" in \(file)" } ?? file
        let suffix = detail.map { " (\($0))" } ?? ""
        return "cannot \(operation) \(target): \(reason)\(suffix)"
    }
}

/// Where an operation happens, so that a failed C call can say so; used inside the lock.
struct HDF5Site {
    /// The file on disk.
    let file: String
    /// The object inside the file, if any.
    let object: String?
    /// What is being done, e.g. `"read dataset"`.
    let operation: String

    /// Returns `result` unless it is negative (HDF5's failure code), in which case it throws
    /// an error naming `call` and carrying HDF5's error-stack message.
    @discardableResult
    func check<I: BinaryInteger>(_ result: I, _ call: String) throws -> I {
        guard result < 0 else { return result }
        throw failure(call)
    }

    /// An error for a failed C call, taking HDF5's message off its error stack.
    func failure(_ call: String) -> HDF5Error {
        HDF5Error(.callFailed, operation: operation, file: file, object: object,
                  reason: "\(call) failed", detail: mostSpecificStackMessage())
    }

    /// An error that is not about a C call.
    func error(_ kind: HDF5Error.Kind, _ reason: String) -> HDF5Error {
        HDF5Error(kind, operation: operation, file: file, object: object, reason: reason)
    }
}

/// The description of the innermost entry of HDF5's error stack, then clears the stack.
private func mostSpecificStackMessage() -> String? {
    final class Box { var message: String? }
    let box = Box()
    let walker: H5E_walk2_t = { _, entry, context in
        guard let entry, let context, let desc = entry.pointee.desc else { return 0 }
        let box = Unmanaged<Box>.fromOpaque(context).takeUnretainedValue()
        let text = String(cString: desc)
        if box.message == nil, !text.isEmpty { box.message = text }
        return 0
    }
    withExtendedLifetime(box) {
        _ = H5Ewalk2(shim_H5E_DEFAULT(), H5E_WALK_UPWARD, walker,
                     Unmanaged.passUnretained(box).toOpaque())
    }
    _ = H5Eclear2(shim_H5E_DEFAULT())
    return box.message
}

/// An owned HDF5 identifier (file, group or dataset) closed exactly once: by `close()` or
/// by `deinit`, under the global lock.
final class HDF5Handle: @unchecked Sendable {
    /// The identifier, or -1 once closed.
    private(set) var id: hid_t
    /// The C function that releases `id`, and its name for error messages.
    private let closer: (hid_t) -> herr_t
    private let closerName: String

    /// Takes ownership of `id` (a +1 reference).
    init(_ id: hid_t, closer: @escaping (hid_t) -> herr_t, closerName: String) {
        self.id = id
        self.closer = closer
        self.closerName = closerName
    }

    var isOpen: Bool { id >= 0 }

    /// Releases the identifier now; later calls do nothing.
    func close(at site: HDF5Site) throws {
        try HDF5Library.locked {
            guard id >= 0 else { return }
            let result = closer(id)
            id = -1
            try site.check(result, closerName)
        }
    }

    deinit {
        if id >= 0 {
            HDF5Library.locked { _ = closer(id) }
        }
    }
}
