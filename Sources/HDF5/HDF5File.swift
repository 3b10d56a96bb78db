// Files and groups. A group is a place to create and find groups, datasets and attributes by
// path; a file is its root group plus opening, flushing and closing.
import CHDF5
import Foundation

/// A group inside an open HDF5 file; every method takes the global HDF5 lock.
///
/// Object paths are relative to this group (`"a/b"`) or absolute from the root (`"/a/b"`);
/// `"."` is the group itself. The group keeps its own HDF5 identifier open until it is
/// released, even if its file is closed first.
public class HDF5Group: @unchecked Sendable {
    /// The identifier of this group (for the root, of the file); owned.
    let handle: HDF5Handle
    /// The path of the file on disk.
    public let filePath: String
    /// The absolute path of this group inside the file, e.g. `"/"` or `"/train"`.
    public let path: String

    init(handle: HDF5Handle, filePath: String, path: String) {
        self.handle = handle
        self.filePath = filePath
        self.path = path
    }

    /// The absolute path of `name` seen from this group.
    func absolutePath(_ name: String) -> String {
        if name.hasPrefix("/") { return name }
        if name == "." || name.isEmpty { return path }
        return path == "/" ? "/" + name : path + "/" + name
    }

    /// A site for error messages about `name` and this group's identifier, checking it is open.
    func site(_ operation: String, _ name: String) throws -> (id: hid_t, site: HDF5Site) {
        let site = HDF5Site(file: filePath, object: absolutePath(name), operation: operation)
        guard handle.isOpen else { throw site.error(.closed, "the file is closed") }
        return (handle.id, site)
    }

    /// Throws `.notFound` unless `name` names an existing object.
    func requireExists(_ name: String, _ site: HDF5Site) throws {
        if try !contains(name) { throw site.error(.notFound, "no such object") }
    }

    // MARK: Groups

    /// Creates a group, and any missing groups on the way to it.
    /// - Parameter name: The new group's path, e.g. `"train/features"`.
    /// - Returns: The new group.
    @discardableResult
    public func createGroup(_ name: String) throws -> HDF5Group {
        try HDF5Library.locked {
            let (location, site) = try site("create group", name)
            if try contains(name) { throw site.error(.alreadyExists, "it already exists") }
            let linkPlist = try site.check(H5Pcreate(shim_H5P_LINK_CREATE()), "H5Pcreate")
            defer { H5Pclose(linkPlist) }
            try site.check(H5Pset_create_intermediate_group(linkPlist, 1), "H5Pset_create_intermediate_group")
            let id = try site.check(H5Gcreate2(location, name, linkPlist, shim_H5P_DEFAULT(), shim_H5P_DEFAULT()),
                                    "H5Gcreate2")
            return HDF5Group(handle: HDF5Handle(id, closer: H5Gclose, closerName: "H5Gclose"),
                             filePath: filePath, path: site.object ?? name)
        }
    }

    /// Opens an existing group.
    /// - Parameter name: The group's path.
    public func group(_ name: String) throws -> HDF5Group {
        try HDF5Library.locked {
            let (location, site) = try site("open group", name)
            try requireExists(name, site)
            let id = try site.check(H5Gopen2(location, name, shim_H5P_DEFAULT()), "H5Gopen2")
            return HDF5Group(handle: HDF5Handle(id, closer: H5Gclose, closerName: "H5Gclose"),
                             filePath: filePath, path: site.object ?? name)
        }
    }

    /// Keeps the dataset `name` open until the returned object is released, so that HDF5 keeps
    /// its chunk cache between reads.
    ///
    /// HDF5 shares one chunk cache among all open handles of a dataset and drops it when the
    /// last one closes. Every read of this module opens and closes its dataset, so a reader
    /// that picks rows at random from a compressed dataset would decompress the same chunks
    /// again on every read; while a retained handle is alive, reads of rows whose chunks are in
    /// the cache cost a copy. The cache holds `cacheBytes` (HDF5's default is 1 MiB) over up
    /// to `cacheSlots` chunks (a prime well above the chunks it holds).
    public func retainDataset(_ name: String, cacheBytes: Int = 1 << 20,
                              cacheSlots: Int = 10_007) throws -> HDF5RetainedDataset {
        try HDF5Library.locked {
            let (location, site) = try site("open dataset", name)
            try requireExists(name, site)
            let access = try site.check(H5Pcreate(shim_H5P_DATASET_ACCESS()), "H5Pcreate")
            defer { H5Pclose(access) }
            try site.check(H5Pset_chunk_cache(access, cacheSlots, cacheBytes, 0.75), "H5Pset_chunk_cache")
            let id = try site.check(H5Dopen2(location, name, access), "H5Dopen2")
            return HDF5RetainedDataset(handle: HDF5Handle(id, closer: H5Dclose, closerName: "H5Dclose"),
                                       site: HDF5Site(file: filePath, object: site.object, operation: "close dataset"))
        }
    }

    /// Whether an object (group, dataset, …) exists at `name`; missing intermediate groups
    /// give `false`, not an error.
    public func contains(_ name: String) throws -> Bool {
        try HDF5Library.locked {
            let (location, site) = try site("look up", name)
            let components = name.split(separator: "/").filter { $0 != "." }
            var prefix = name.hasPrefix("/") ? "/" : ""
            for component in components {
                prefix += (prefix.isEmpty || prefix.hasSuffix("/") ? "" : "/") + component
                if try site.check(H5Lexists(location, prefix, shim_H5P_DEFAULT()), "H5Lexists") == 0 { return false }
            }
            if prefix.isEmpty || prefix == "/" { return true }
            return try site.check(H5Oexists_by_name(location, prefix, shim_H5P_DEFAULT()), "H5Oexists_by_name") > 0
        }
    }

    /// The members of a group, sorted by name.
    /// - Parameter name: The group's path; by default this group.
    public func children(of name: String = ".") throws -> [HDF5Entry] {
        try HDF5Library.locked {
            let (location, site) = try site("list group", name)
            try requireExists(name, site)
            let group = try site.check(H5Gopen2(location, name, shim_H5P_DEFAULT()), "H5Gopen2")
            defer { H5Gclose(group) }
            var info = H5G_info_t()
            try site.check(H5Gget_info(group, &info), "H5Gget_info")
            var entries: [HDF5Entry] = []
            for index in 0..<info.nlinks {
                let child = try readName(site: site, call: "H5Lget_name_by_idx") { buffer, size in
                    H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, index, buffer, size, shim_H5P_DEFAULT())
                }
                let kind = try objectKind(group, child, site)
                let childPath = site.object == "/" ? "/" + child : (site.object ?? "") + "/" + child
                entries.append(HDF5Entry(name: child, path: childPath, kind: kind))
            }
            return entries
        }
    }

    /// Every object below a group, depth first in name order (a group before its members).
    ///
    /// A group reached a second time through another hard link is listed but not re-entered.
    /// - Parameter name: The group to start from; by default this group.
    public func walk(from name: String = ".") throws -> [HDF5Entry] {
        try HDF5Library.locked {
            var visited = Set<String>()
            var result: [HDF5Entry] = []
            func visit(_ groupPath: String) throws {
                for entry in try children(of: groupPath) {
                    result.append(entry)
                    if entry.kind == .group, visited.insert(try objectAddress(entry.path)).inserted {
                        try visit(entry.path)
                    }
                }
            }
            visited.insert(try objectAddress(name))
            try visit(absolutePath(name))
            return result
        }
    }

    /// The kind of the object `name` under `group`; `.other` for dangling links.
    private func objectKind(_ group: hid_t, _ name: String, _ site: HDF5Site) throws -> HDF5Entry.Kind {
        guard try site.check(H5Oexists_by_name(group, name, shim_H5P_DEFAULT()), "H5Oexists_by_name") > 0 else {
            return .other
        }
        var info = H5O_info_t()
        try site.check(H5Oget_info_by_name2(group, name, &info, UInt32(H5O_INFO_BASIC), shim_H5P_DEFAULT()),
                       "H5Oget_info_by_name2")
        switch info.type {
        case H5O_TYPE_GROUP: return .group
        case H5O_TYPE_DATASET: return .dataset
        default: return .other
        }
    }

    /// A key identifying the object at `name` within its file (for cycle detection).
    private func objectAddress(_ name: String) throws -> String {
        let (location, site) = try site("look up", name)
        var info = H5O_info_t()
        try site.check(H5Oget_info_by_name2(location, name, &info, UInt32(H5O_INFO_BASIC), shim_H5P_DEFAULT()),
                       "H5Oget_info_by_name2")
        return "\(info.fileno):\(info.addr)"
    }
}

/// One member of a group, as listed by `HDF5Group.children(of:)` and `walk(from:)`.
public struct HDF5Entry: Sendable, Equatable {
    /// What an object is.
    public enum Kind: Sendable, Equatable {
        case group, dataset, other
    }
    /// The member's name inside its group.
    public let name: String
    /// The member's absolute path inside the file.
    public let path: String
    /// Whether it is a group, a dataset or something else (named type, dangling link).
    public let kind: Kind
}

/// Reads a string from a C function that, like `H5Lget_name_by_idx`, returns the length when
/// passed a null buffer and fills a buffer of `length + 1` bytes otherwise.
func readName(site: HDF5Site, call: String,
              _ get: (UnsafeMutablePointer<CChar>?, Int) -> Int) throws -> String {
    let length = try site.check(get(nil, 0), call)
    var buffer = [CChar](repeating: 0, count: length + 1)
    try site.check(get(&buffer, length + 1), call)
    return String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// An open HDF5 file; it is its own root group (`path == "/"`).
///
/// The file is closed by `close()` or when the last reference goes away; prefer the scoped
/// `withFile(_:mode:_:)` and `withNewFile(_:overwrite:_:)` helpers.
public final class HDF5File: HDF5Group, @unchecked Sendable {
    /// How an existing file is opened.
    public enum Mode: Sendable {
        case readOnly, readWrite
    }

    /// Creates a new, empty HDF5 file.
    /// - Parameters:
    ///   - path: Where to create it.
    ///   - overwrite: Whether to replace an existing file (`H5F_ACC_TRUNC`); if `false`
    ///     (the default) an existing file is an `.alreadyExists` error (`H5F_ACC_EXCL`).
    ///   - userBlock: Bytes reserved at the start of the file for the caller (0, or a power of
    ///     two of at least 512); HDF5 and h5py skip them.
    public static func create(_ path: String, overwrite: Bool = false, userBlock: Int = 0) throws -> HDF5File {
        try HDF5Library.locked {
            let site = HDF5Site(file: path, object: nil, operation: "create")
            if !overwrite, FileManager.default.fileExists(atPath: path) {
                throw site.error(.alreadyExists, "the file already exists")
            }
            let flags = overwrite ? shim_H5F_ACC_TRUNC() : shim_H5F_ACC_EXCL()
            var creation = shim_H5P_DEFAULT()
            if userBlock > 0 {
                creation = try site.check(H5Pcreate(shim_H5P_FILE_CREATE()), "H5Pcreate")
                try site.check(H5Pset_userblock(creation, hsize_t(userBlock)), "H5Pset_userblock")
            }
            defer { if userBlock > 0 { H5Pclose(creation) } }
            let id = try site.check(H5Fcreate(path, flags, creation, shim_H5P_DEFAULT()), "H5Fcreate")
            return HDF5File(handle: HDF5Handle(id, closer: H5Fclose, closerName: "H5Fclose"), filePath: path, path: "/")
        }
    }

    /// Opens an existing HDF5 file.
    /// - Parameters:
    ///   - path: The file; a missing file is a `.noSuchFile` error and a file that is not
    ///     HDF5 a `.notHDF5File` error.
    ///   - mode: Read-only (the default) or read-write.
    public static func open(_ path: String, mode: Mode = .readOnly) throws -> HDF5File {
        try HDF5Library.locked {
            let site = HDF5Site(file: path, object: nil, operation: "open")
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw site.error(.noSuchFile, "no such file")
            }
            if isDirectory.boolValue { throw site.error(.notHDF5File, "it is a directory, not an HDF5 file") }
            if try site.check(H5Fis_hdf5(path), "H5Fis_hdf5") == 0 {
                throw site.error(.notHDF5File, "not an HDF5 file")
            }
            let flags = mode == .readOnly ? shim_H5F_ACC_RDONLY() : shim_H5F_ACC_RDWR()
            let id = try site.check(H5Fopen(path, flags, shim_H5P_DEFAULT()), "H5Fopen")
            return HDF5File(handle: HDF5Handle(id, closer: H5Fclose, closerName: "H5Fclose"), filePath: path, path: "/")
        }
    }

    /// Opens an existing file, runs `body` with it and closes it, even if `body` throws.
    /// - Parameters:
    ///   - path: The file.
    ///   - mode: Read-only (the default) or read-write.
    ///   - body: What to do with the open file; the file must not be used after it returns.
    public static func withFile<T>(_ path: String, mode: Mode = .readOnly,
                                   _ body: (HDF5File) throws -> T) throws -> T {
        let file = try open(path, mode: mode)
        return try file.closing(after: body)
    }

    /// Creates a file, runs `body` with it and closes it, even if `body` throws.
    /// - Parameters:
    ///   - path: Where to create the file.
    ///   - overwrite: Whether to replace an existing file (default `false`).
    ///   - body: What to write; the file must not be used after it returns.
    public static func withNewFile<T>(_ path: String, overwrite: Bool = false, userBlock: Int = 0,
                                      _ body: (HDF5File) throws -> T) throws -> T {
        let file = try create(path, overwrite: overwrite, userBlock: userBlock)
        return try file.closing(after: body)
    }

    private func closing<T>(after body: (HDF5File) throws -> T) throws -> T {
        let result: T
        do {
            result = try body(self)
        } catch {
            try? close()
            throw error
        }
        try close()
        return result
    }

    /// Whether the file is still open.
    public var isOpen: Bool { HDF5Library.locked { handle.isOpen } }

    /// Writes everything buffered for this file to disk.
    public func flush() throws {
        try HDF5Library.locked {
            let (id, site) = try site("flush", "/")
            try site.check(H5Fflush(id, H5F_SCOPE_GLOBAL), "H5Fflush")
        }
    }

    /// Closes the file; later calls do nothing, and other uses throw `.closed`.
    ///
    /// Groups opened from the file stay usable until they are released.
    public func close() throws {
        try handle.close(at: HDF5Site(file: filePath, object: nil, operation: "close"))
    }
}

/// A dataset held open by ``HDF5Group/retainDataset(_:cacheBytes:cacheSlots:)``: its chunk
/// cache lives while this object does (or until ``release()``).
public final class HDF5RetainedDataset: @unchecked Sendable {
    private let handle: HDF5Handle
    /// The file and dataset, for the error of a failed close.
    private let site: HDF5Site

    init(handle: HDF5Handle, site: HDF5Site) {
        self.handle = handle
        self.site = site
    }

    /// Closes the dataset handle now; later calls do nothing.
    public func release() throws {
        try handle.close(at: site)
    }
}
