// Datasets: n-dimensional arrays of numbers stored row-major, created, written and read
// whole or by rows (the first dimension), optionally chunked and gzip-compressed.
import CHDF5

/// The type of the elements of a dataset or attribute as stored in the file.
public enum HDF5ElementType: Sendable, Equatable, CustomStringConvertible {
    case float(bits: Int)
    case signedInteger(bits: Int)
    case unsignedInteger(bits: Int)
    case string
    /// Any other HDF5 type class (compound, enum, reference, …), named.
    case other(String)

    public var description: String {
        switch self {
        case .float(let bits): return "float\(bits)"
        case .signedInteger(let bits): return "int\(bits)"
        case .unsignedInteger(let bits): return "uint\(bits)"
        case .string: return "string"
        case .other(let name): return name
        }
    }

    /// The native (in-memory) HDF5 type for numbers of this type, or nil if there is none.
    var nativeType: hid_t? {
        switch self {
        case .float(32): return shim_H5T_NATIVE_FLOAT()
        case .float(64): return shim_H5T_NATIVE_DOUBLE()
        case .signedInteger(8): return shim_H5T_NATIVE_INT8()
        case .signedInteger(16): return shim_H5T_NATIVE_INT16()
        case .signedInteger(32): return shim_H5T_NATIVE_INT32()
        case .signedInteger(64): return shim_H5T_NATIVE_INT64()
        case .unsignedInteger(8): return shim_H5T_NATIVE_UINT8()
        case .unsignedInteger(16): return shim_H5T_NATIVE_UINT16()
        case .unsignedInteger(32): return shim_H5T_NATIVE_UINT32()
        case .unsignedInteger(64): return shim_H5T_NATIVE_UINT64()
        default: return nil
        }
    }

    /// The element type of the HDF5 datatype `type` (borrowed, not closed here).
    init(describing type: hid_t, site: HDF5Site) throws {
        let size = H5Tget_size(type)
        guard size > 0 else { throw site.failure("H5Tget_size") }
        let bits = size * 8
        switch H5Tget_class(type) {
        case H5T_FLOAT: self = .float(bits: bits)
        case H5T_INTEGER:
            let sign = H5Tget_sign(type)
            if sign == H5T_SGN_ERROR { throw site.failure("H5Tget_sign") }
            self = sign == H5T_SGN_NONE ? .unsignedInteger(bits: bits) : .signedInteger(bits: bits)
        case H5T_STRING: self = .string
        case H5T_COMPOUND: self = .other("compound")
        case H5T_ENUM: self = .other("enum")
        case H5T_ARRAY: self = .other("array")
        case H5T_VLEN: self = .other("vlen")
        case H5T_REFERENCE: self = .other("reference")
        case H5T_OPAQUE: self = .other("opaque")
        case H5T_BITFIELD: self = .other("bitfield")
        case H5T_NO_CLASS: throw site.failure("H5Tget_class")
        default: self = .other("unknown")
        }
    }
}

/// A number type that datasets can hold: `Float`, `Double`, the fixed-width integers and `Int`.
public protocol HDF5Scalar: BitwiseCopyable, Sendable {
    /// How values of this type are stored (and so which native HDF5 type is used in memory).
    static var hdf5ElementType: HDF5ElementType { get }
}

extension Float: HDF5Scalar { public static var hdf5ElementType: HDF5ElementType { .float(bits: 32) } }
extension Double: HDF5Scalar { public static var hdf5ElementType: HDF5ElementType { .float(bits: 64) } }
extension Int8: HDF5Scalar { public static var hdf5ElementType: HDF5ElementType { .signedInteger(bits: 8) } }
extension Int16: HDF5Scalar { public static var hdf5ElementType: HDF5ElementType { .signedInteger(bits: 16) } }
extension Int32: HDF5Scalar { public static var hdf5ElementType: HDF5ElementType { .signedInteger(bits: 32) } }
extension Int64: HDF5Scalar { public static var hdf5ElementType: HDF5ElementType { .signedInteger(bits: 64) } }
extension Int: HDF5Scalar { public static var hdf5ElementType: HDF5ElementType { .signedInteger(bits: Int.bitWidth) } }
extension UInt8: HDF5Scalar { public static var hdf5ElementType: HDF5ElementType { .unsignedInteger(bits: 8) } }
extension UInt16: HDF5Scalar { public static var hdf5ElementType: HDF5ElementType { .unsignedInteger(bits: 16) } }
extension UInt32: HDF5Scalar { public static var hdf5ElementType: HDF5ElementType { .unsignedInteger(bits: 32) } }
extension UInt64: HDF5Scalar { public static var hdf5ElementType: HDF5ElementType { .unsignedInteger(bits: 64) } }

/// What `HDF5Group.info(_:)` tells about a dataset.
public struct HDF5DatasetInfo: Sendable, Equatable {
    /// A filter applied to each chunk.
    public enum Filter: Sendable, Equatable, CustomStringConvertible {
        case gzip(level: Int)
        case shuffle
        case fletcher32
        case other(id: Int, name: String)

        public var description: String {
            switch self {
            case .gzip(let level): return "gzip(\(level))"
            case .shuffle: return "shuffle"
            case .fletcher32: return "fletcher32"
            case .other(let id, let name): return name.isEmpty ? "filter \(id)" : name
            }
        }
    }
    /// The size of each dimension; empty for a scalar.
    public let shape: [Int]
    /// How elements are stored in the file.
    public let elementType: HDF5ElementType
    /// The chunk shape, or nil for a contiguous (or compact) dataset.
    public let chunks: [Int]?
    /// The filters applied to each chunk, in order.
    public let filters: [Filter]
}

extension HDF5Group {
    // MARK: Creating and writing

    /// Creates a dataset of the given shape, filled with zeros.
    ///
    /// A chunked dataset may grow along its first dimension (its maximum size is unlimited),
    /// which also allows an empty first dimension.
    /// - Parameters:
    ///   - name: The dataset's path; its parent groups are created if missing.
    ///   - type: The element type, e.g. `Float.self`.
    ///   - shape: The size of each dimension; `[]` makes a scalar.
    ///   - chunks: The chunk shape (one positive size per dimension), or nil (the default)
    ///     for contiguous storage.
    ///   - gzipLevel: Deflate compression level 0...9, or nil (the default) for none;
    ///     compression needs `chunks`.
    public func createDataset<T: HDF5Scalar>(_ name: String, of type: T.Type, shape: [Int],
                                             chunks: [Int]? = nil, gzipLevel: Int? = nil) throws {
        try HDF5Library.locked {
            let (location, site) = try site("create dataset", name)
            guard let native = T.hdf5ElementType.nativeType else {
                throw site.error(.invalidArgument, "unsupported element type \(T.hdf5ElementType)")
            }
            guard shape.allSatisfy({ $0 >= 0 }) else { throw site.error(.invalidArgument, "negative size in shape \(shape)") }
            if let chunks, chunks.count != shape.count || chunks.isEmpty || chunks.contains(where: { $0 <= 0 }) {
                throw site.error(.invalidArgument, "chunks \(chunks) do not fit shape \(shape)")
            }
            if let gzipLevel, chunks == nil || !(0...9).contains(gzipLevel) {
                throw site.error(.invalidArgument, "gzip level \(gzipLevel) needs chunks and must be in 0...9")
            }
            if try contains(name) { throw site.error(.alreadyExists, "it already exists") }

            var dims = shape.map { hsize_t($0) }
            var maxDims = dims
            if chunks != nil { maxDims[0] = shim_H5S_UNLIMITED() }
            let space = try site.check(shape.isEmpty ? H5Screate(H5S_SCALAR)
                                                     : H5Screate_simple(Int32(shape.count), &dims, &maxDims),
                                       "H5Screate_simple")
            defer { H5Sclose(space) }
            let createPlist = try site.check(H5Pcreate(shim_H5P_DATASET_CREATE()), "H5Pcreate")
            defer { H5Pclose(createPlist) }
            if let chunks {
                var chunkDims = chunks.map { hsize_t($0) }
                try site.check(H5Pset_chunk(createPlist, Int32(chunks.count), &chunkDims), "H5Pset_chunk")
            }
            if let gzipLevel { try site.check(H5Pset_deflate(createPlist, UInt32(gzipLevel)), "H5Pset_deflate") }
            let linkPlist = try site.check(H5Pcreate(shim_H5P_LINK_CREATE()), "H5Pcreate")
            defer { H5Pclose(linkPlist) }
            try site.check(H5Pset_create_intermediate_group(linkPlist, 1), "H5Pset_create_intermediate_group")
            let dataset = try site.check(H5Dcreate2(location, name, native, space, linkPlist, createPlist,
                                                    shim_H5P_DEFAULT()), "H5Dcreate2")
            try site.check(H5Dclose(dataset), "H5Dclose")
        }
    }

    /// Creates a dataset and writes `values` into it; see `createDataset(_:of:shape:chunks:gzipLevel:)`.
    /// - Parameter values: The elements in row-major order; their count must be the product of `shape`.
    public func createDataset<T: HDF5Scalar>(_ name: String, shape: [Int], values: [T],
                                             chunks: [Int]? = nil, gzipLevel: Int? = nil) throws {
        try HDF5Library.locked {
            try createDataset(name, of: T.self, shape: shape, chunks: chunks, gzipLevel: gzipLevel)
            try write(values, to: name)
        }
    }

    /// Writes the whole dataset.
    /// - Parameters:
    ///   - values: The elements in row-major order; their count must match the dataset's shape.
    ///     HDF5 converts them if the dataset stores another number type.
    ///   - name: The dataset's path.
    public func write<T: HDF5Scalar>(_ values: [T], to name: String) throws {
        try withDataset(name, "write dataset") { dataset, space, shape, site in
            _ = try transfer(values, dataset: dataset, fileSpace: space, rowCount: shape.first ?? 1,
                         rowSize: shape.dropFirst().reduce(1, *), site: site)
        }
    }

    /// Writes a range of rows (indices along the first dimension) of a dataset.
    /// - Parameters:
    ///   - values: The rows' elements in row-major order.
    ///   - name: The dataset's path.
    ///   - rows: Which rows; it must lie within the dataset.
    public func write<T: HDF5Scalar>(_ values: [T], to name: String, rows: Range<Int>) throws {
        try withDataset(name, "write rows of dataset") { dataset, space, shape, site in
            try selectRows(rows, in: space, shape: shape, site: site)
            _ = try transfer(values, dataset: dataset, fileSpace: space, rowCount: rows.count,
                         rowSize: shape.dropFirst().reduce(1, *), site: site)
        }
    }

    /// Changes the number of rows (the first dimension) of a dataset created with `chunks`,
    /// keeping the rows that remain: e.g. a dataset made for the rows planned, shrunk to the
    /// rows written.
    /// - Parameters:
    ///   - rows: The new number of rows.
    ///   - name: The dataset's path.
    public func setRowCount(_ rows: Int, of name: String) throws {
        try withDataset(name, "resize dataset") { dataset, _, shape, site in
            guard !shape.isEmpty, rows >= 0 else { throw site.error(.invalidArgument, "cannot give \(shape) \(rows) rows") }
            var dims = shape.map { hsize_t($0) }
            dims[0] = hsize_t(rows)
            try site.check(H5Dset_extent(dataset, &dims), "H5Dset_extent")
        }
    }

    // MARK: Reading

    /// Reads a whole dataset, converting its elements to `T` if they are stored as another number type.
    /// - Parameters:
    ///   - type: The element type wanted, e.g. `Float.self`.
    ///   - name: The dataset's path.
    /// - Returns: The dataset's shape and its elements in row-major order.
    public func read<T: HDF5Scalar>(_ type: T.Type, from name: String) throws -> (shape: [Int], values: [T]) {
        try withDataset(name, "read dataset") { dataset, space, shape, site in
            let values: [T] = try transfer(nil, dataset: dataset, fileSpace: space, rowCount: shape.first ?? 1,
                                           rowSize: shape.dropFirst().reduce(1, *), site: site)
            return (shape, values)
        }
    }

    /// Reads a range of rows (indices along the first dimension).
    /// - Parameters:
    ///   - rows: Which rows; it must lie within the dataset.
    ///   - type: The element type wanted.
    ///   - name: The dataset's path.
    /// - Returns: The shape read (`[rows.count] + shape.dropFirst()`) and the elements.
    public func readRows<T: HDF5Scalar>(_ rows: Range<Int>, as type: T.Type, from name: String) throws
        -> (shape: [Int], values: [T]) {
        try withDataset(name, "read rows of dataset") { dataset, space, shape, site in
            try selectRows(rows, in: space, shape: shape, site: site)
            let values: [T] = try transfer(nil, dataset: dataset, fileSpace: space, rowCount: rows.count,
                                           rowSize: shape.dropFirst().reduce(1, *), site: site)
            return ([rows.count] + shape.dropFirst(), values)
        }
    }

    /// Reads arbitrary rows, in the order asked and with repeats.
    ///
    /// The distinct rows are read in increasing order, in blocks: rows closer than a chunk
    /// (or 64 KiB) apart share one read of the rows between them, and a block spans at most
    /// 8 MiB unless one chunk is larger. So each chunk is decompressed about once and scattered
    /// indices cost about what reading their span costs.
    /// - Parameters:
    ///   - rows: Row indices, in any order, possibly repeated.
    ///   - type: The element type wanted.
    ///   - name: The dataset's path.
    /// - Returns: The shape read (`[rows.count] + shape.dropFirst()`) and the elements,
    ///   row `i` of the result being row `rows[i]` of the dataset.
    public func readRows<T: HDF5Scalar>(_ rows: [Int], as type: T.Type, from name: String) throws
        -> (shape: [Int], values: [T]) {
        try withDataset(name, "read rows of dataset") { dataset, space, shape, site in
            guard let rowCount = shape.first else { throw site.error(.invalidArgument, "a scalar has no rows") }
            if let bad = rows.first(where: { !(0..<rowCount).contains($0) }) {
                throw site.error(.invalidArgument, "row \(bad) is outside 0..<\(rowCount)")
            }
            let rowSize = shape.dropFirst().reduce(1, *)
            let resultShape = [rows.count] + shape.dropFirst()
            let unique = Array(Set(rows)).sorted()
            guard !unique.isEmpty, rowSize > 0 else { return (resultShape, []) }
            let rowBytes = max(1, rowSize * MemoryLayout<T>.stride)
            let maxGap = max(try chunkShape(of: dataset, rank: shape.count, site: site)?.first ?? 1, 65_536 / rowBytes)
            let maxBlock = max(maxGap, (8 << 20) / rowBytes)
            // The distinct rows' elements, in increasing row order.
            var distinct: [T] = []
            distinct.reserveCapacity(unique.count * rowSize)
            var first = 0
            while first < unique.count {
                var last = first
                while last + 1 < unique.count, unique[last + 1] - unique[last] - 1 <= maxGap,
                      unique[last + 1] - unique[first] < maxBlock {
                    last += 1
                }
                let block = unique[first]..<unique[last] + 1
                try selectRows(block, in: space, shape: shape, site: site)
                let read: [T] = try transfer(nil, dataset: dataset, fileSpace: space, rowCount: block.count,
                                             rowSize: rowSize, site: site)
                for row in unique[first...last] {
                    let offset = (row - block.lowerBound) * rowSize
                    distinct.append(contentsOf: read[offset..<offset + rowSize])
                }
                first = last + 1
            }
            if unique == rows { return (resultShape, distinct) }
            var position: [Int: Int] = [:]
            for (index, row) in unique.enumerated() { position[row] = index * rowSize }
            var values: [T] = []
            values.reserveCapacity(rows.count * rowSize)
            for row in rows {
                let offset = position[row] ?? 0
                values.append(contentsOf: distinct[offset..<offset + rowSize])
            }
            return (resultShape, values)
        }
    }

    /// The shape, element type, chunking and filters of a dataset.
    /// - Parameter name: The dataset's path.
    public func info(_ name: String) throws -> HDF5DatasetInfo {
        try withDataset(name, "describe dataset") { dataset, _, shape, site in
            let type = try site.check(H5Dget_type(dataset), "H5Dget_type")
            defer { H5Tclose(type) }
            let elementType = try HDF5ElementType(describing: type, site: site)
            let plist = try site.check(H5Dget_create_plist(dataset), "H5Dget_create_plist")
            defer { H5Pclose(plist) }
            let chunks = try chunkShape(of: dataset, rank: shape.count, site: site)
            var filters: [HDF5DatasetInfo.Filter] = []
            for index in 0..<(try site.check(H5Pget_nfilters(plist), "H5Pget_nfilters")) {
                var flags: UInt32 = 0
                var valueCount = 8
                var values = [UInt32](repeating: 0, count: valueCount)
                var nameBuffer = [CChar](repeating: 0, count: 256)
                var config: UInt32 = 0
                let id = H5Pget_filter2(plist, UInt32(index), &flags, &valueCount, &values, nameBuffer.count,
                                        &nameBuffer, &config)
                try site.check(id, "H5Pget_filter2")
                switch id {
                case H5Z_FILTER_DEFLATE: filters.append(.gzip(level: valueCount > 0 ? Int(values[0]) : 0))
                case H5Z_FILTER_SHUFFLE: filters.append(.shuffle)
                case H5Z_FILTER_FLETCHER32: filters.append(.fletcher32)
                default:
                    let filterName = String(decoding: nameBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
                                            as: UTF8.self)
                    filters.append(.other(id: Int(id), name: filterName))
                }
            }
            return HDF5DatasetInfo(shape: shape, elementType: elementType, chunks: chunks, filters: filters)
        }
    }

    // MARK: Helpers

    /// Opens dataset `name` and its file dataspace, and runs `body` with them and its shape.
    func withDataset<R>(_ name: String, _ operation: String,
                        _ body: (_ dataset: hid_t, _ space: hid_t, _ shape: [Int], HDF5Site) throws -> R) throws -> R {
        try HDF5Library.locked {
            let (location, site) = try site(operation, name)
            try requireExists(name, site)
            let dataset = try site.check(H5Dopen2(location, name, shim_H5P_DEFAULT()), "H5Dopen2")
            defer { H5Dclose(dataset) }
            let space = try site.check(H5Dget_space(dataset), "H5Dget_space")
            defer { H5Sclose(space) }
            let rank = try site.check(H5Sget_simple_extent_ndims(space), "H5Sget_simple_extent_ndims")
            var dims = [hsize_t](repeating: 0, count: Int(rank))
            try site.check(H5Sget_simple_extent_dims(space, &dims, nil), "H5Sget_simple_extent_dims")
            return try body(dataset, space, dims.map { Int($0) }, site)
        }
    }

    /// The chunk shape of a dataset, or nil if it is not chunked.
    private func chunkShape(of dataset: hid_t, rank: Int, site: HDF5Site) throws -> [Int]? {
        let plist = try site.check(H5Dget_create_plist(dataset), "H5Dget_create_plist")
        defer { H5Pclose(plist) }
        let layout = H5Pget_layout(plist)
        if layout == H5D_LAYOUT_ERROR { throw site.failure("H5Pget_layout") }
        guard layout == H5D_CHUNKED else { return nil }
        var dims = [hsize_t](repeating: 0, count: max(rank, 1))
        let chunkRank = try site.check(H5Pget_chunk(plist, Int32(dims.count), &dims), "H5Pget_chunk")
        return dims.prefix(Int(chunkRank)).map { Int($0) }
    }

    /// Selects `rows` of the first dimension of the file dataspace `space`.
    private func selectRows(_ rows: Range<Int>, in space: hid_t, shape: [Int], site: HDF5Site) throws {
        guard let rowCount = shape.first else { throw site.error(.invalidArgument, "a scalar has no rows") }
        guard rows.lowerBound >= 0, rows.upperBound <= rowCount else {
            throw site.error(.invalidArgument, "rows \(rows) are outside 0..<\(rowCount)")
        }
        if rows.isEmpty {
            try site.check(H5Sselect_none(space), "H5Sselect_none")
            return
        }
        var start = [hsize_t(rows.lowerBound)] + Array(repeating: 0, count: shape.count - 1)
        var count = [hsize_t(rows.count)] + shape.dropFirst().map { hsize_t($0) }
        try site.check(H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, nil, &count, nil), "H5Sselect_hyperslab")
    }

    /// Writes `values` to, or reads and returns, the selected `rowCount × rowSize` elements.
    private func transfer<T: HDF5Scalar>(_ values: [T]?, dataset: hid_t, fileSpace: hid_t, rowCount: Int,
                                         rowSize: Int, site: HDF5Site) throws -> [T] {
        guard let native = T.hdf5ElementType.nativeType else {
            throw site.error(.invalidArgument, "unsupported element type \(T.hdf5ElementType)")
        }
        let count = rowCount * rowSize
        if let values, values.count != count {
            throw site.error(.invalidArgument, "\(values.count) values given for \(count) elements")
        }
        guard count > 0 else { return [] }
        // The memory space has the selection's shape (rows × the file's other dimensions): with
        // a flat one HDF5 maps chunks to memory element by element, 20–50× slower on
        // multi-dimensional chunked datasets.
        let rank = try site.check(H5Sget_simple_extent_ndims(fileSpace), "H5Sget_simple_extent_ndims")
        var fileDims = [hsize_t](repeating: 0, count: max(Int(rank), 1))
        if rank > 0 { try site.check(H5Sget_simple_extent_dims(fileSpace, &fileDims, nil), "H5Sget_simple_extent_dims") }
        var memoryDims = rank > 1 && Int(fileDims.dropFirst().reduce(1, *)) == rowSize
            ? [hsize_t(rowCount)] + fileDims.dropFirst() : [hsize_t(count)]
        let memorySpace = try site.check(H5Screate_simple(Int32(memoryDims.count), &memoryDims, nil), "H5Screate_simple")
        defer { H5Sclose(memorySpace) }
        if let values {
            try values.withUnsafeBytes { buffer in
                _ = try site.check(H5Dwrite(dataset, native, memorySpace, fileSpace, shim_H5P_DEFAULT(),
                                        buffer.baseAddress), "H5Dwrite")
            }
            return []
        }
        return try [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            initialized = 0
            try site.check(H5Dread(dataset, native, memorySpace, fileSpace, shim_H5P_DEFAULT(),
                                   buffer.baseAddress), "H5Dread")
            initialized = count
        }
    }
}
