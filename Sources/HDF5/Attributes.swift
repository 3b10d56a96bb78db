// Attributes: small named values (numbers, number arrays, strings) attached to a file, a group
// or a dataset.
import CHDF5
import Foundation

/// The value of an attribute.
///
/// Integers of any stored width read as `.int64`/`.int64Array`, floats as `.double`/`.doubleArray`;
/// scalars (rank 0) read as the single cases, anything with a dimension as the array cases.
public enum HDF5AttributeValue: Sendable, Equatable, CustomStringConvertible {
    case int64(Int64)
    case double(Double)
    case string(String)
    case int64Array([Int64])
    case doubleArray([Double])
    case stringArray([String])

    /// The value as it would be written in Swift: strings quoted, arrays of more than eight
    /// elements abbreviated to their first six and a count.
    public var description: String {
        func list<T>(_ values: [T], _ show: (T) -> String) -> String {
            if values.count <= 8 { return "[" + values.map(show).joined(separator: ", ") + "]" }
            return "[" + values.prefix(6).map(show).joined(separator: ", ") + ", … (\(values.count) values)]"
        }
        switch self {
        case .int64(let value): return String(value)
        case .double(let value): return String(value)
        case .string(let value): return value.debugDescription
        case .int64Array(let values): return list(values) { String($0) }
        case .doubleArray(let values): return list(values) { String($0) }
        case .stringArray(let values): return list(values) { $0.debugDescription }
        }
    }
}

/// How strings are stored in attributes.
public enum HDF5StringStorage: Sendable {
    /// Variable-length UTF-8 (what h5py writes for Python `str`).
    case variableLength
    /// Fixed-length UTF-8, NUL-padded to the longest string.
    case fixedLength
}

extension HDF5Group {
    /// Sets an attribute, replacing any attribute of the same name.
    /// - Parameters:
    ///   - name: The attribute's name.
    ///   - value: Its value; numbers are stored as 64-bit integers or doubles.
    ///   - object: The path of the group or dataset to attach it to; by default this group.
    ///   - strings: How string values are stored (default variable-length).
    public func setAttribute(_ name: String, to value: HDF5AttributeValue, on object: String = ".",
                             strings: HDF5StringStorage = .variableLength) throws {
        try HDF5Library.locked {
            let (location, site) = try site("write attribute \"\(name)\" of", object)
            try requireExists(object, site)
            if try site.check(H5Aexists_by_name(location, object, name, shim_H5P_DEFAULT()), "H5Aexists_by_name") > 0 {
                try site.check(H5Adelete_by_name(location, object, name, shim_H5P_DEFAULT()), "H5Adelete_by_name")
            }
            func create(type: hid_t, count: Int?, _ write: (hid_t) throws -> herr_t) throws {
                var dims = [hsize_t(count ?? 1)]
                let space = try site.check(count == nil ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &dims, nil),
                                           "H5Screate_simple")
                defer { H5Sclose(space) }
                let attribute = try site.check(H5Acreate_by_name(location, object, name, type, space, shim_H5P_DEFAULT(),
                                                                 shim_H5P_DEFAULT(), shim_H5P_DEFAULT()), "H5Acreate_by_name")
                defer { H5Aclose(attribute) }
                try site.check(try write(attribute), "H5Awrite")
            }
            func numbers<T: HDF5Scalar>(_ values: [T], scalar: Bool) throws {
                guard let type = T.hdf5ElementType.nativeType else {
                    throw site.error(.invalidArgument, "unsupported element type \(T.hdf5ElementType)")
                }
                try create(type: type, count: scalar ? nil : values.count) { attribute in
                    values.withUnsafeBytes { H5Awrite(attribute, type, $0.baseAddress) }
                }
            }
            func text(_ values: [String], scalar: Bool) throws {
                let type = try site.check(H5Tcopy(shim_H5T_C_S1()), "H5Tcopy")
                defer { H5Tclose(type) }
                try site.check(H5Tset_cset(type, H5T_CSET_UTF8), "H5Tset_cset")
                let count = scalar ? nil : values.count
                if strings == .variableLength {
                    try site.check(H5Tset_size(type, shim_H5T_VARIABLE()), "H5Tset_size")
                    let pointers = values.map { strdup($0) }
                    defer { pointers.forEach { free($0) } }
                    try create(type: type, count: count) { attribute in
                        pointers.withUnsafeBytes { H5Awrite(attribute, type, $0.baseAddress) }
                    }
                } else {
                    let size = max(1, values.map(\.utf8.count).max() ?? 1)
                    try site.check(H5Tset_size(type, size), "H5Tset_size")
                    try site.check(H5Tset_strpad(type, H5T_STR_NULLPAD), "H5Tset_strpad")
                    var bytes = [UInt8](repeating: 0, count: size * max(values.count, 1))
                    for (index, value) in values.enumerated() {
                        bytes.replaceSubrange(index * size..<index * size + value.utf8.count, with: value.utf8)
                    }
                    try create(type: type, count: count) { attribute in
                        bytes.withUnsafeBytes { H5Awrite(attribute, type, $0.baseAddress) }
                    }
                }
            }
            switch value {
            case .int64(let value): try numbers([value], scalar: true)
            case .double(let value): try numbers([value], scalar: true)
            case .string(let value): try text([value], scalar: true)
            case .int64Array(let values): try numbers(values, scalar: false)
            case .doubleArray(let values): try numbers(values, scalar: false)
            case .stringArray(let values): try text(values, scalar: false)
            }
        }
    }

    /// Reads an attribute, whichever way h5py or this module stored it.
    /// - Parameters:
    ///   - name: The attribute's name.
    ///   - object: The path of the group or dataset it is attached to; by default this group.
    public func attribute(_ name: String, of object: String = ".") throws -> HDF5AttributeValue {
        try HDF5Library.locked {
            let (location, site) = try site("read attribute \"\(name)\" of", object)
            try requireExists(object, site)
            if try site.check(H5Aexists_by_name(location, object, name, shim_H5P_DEFAULT()), "H5Aexists_by_name") == 0 {
                throw site.error(.notFound, "no such attribute")
            }
            let attribute = try site.check(H5Aopen_by_name(location, object, name, shim_H5P_DEFAULT(),
                                                           shim_H5P_DEFAULT()), "H5Aopen_by_name")
            defer { H5Aclose(attribute) }
            let fileType = try site.check(H5Aget_type(attribute), "H5Aget_type")
            defer { H5Tclose(fileType) }
            let space = try site.check(H5Aget_space(attribute), "H5Aget_space")
            defer { H5Sclose(space) }
            let isScalar = try site.check(H5Sget_simple_extent_ndims(space), "H5Sget_simple_extent_ndims") == 0
                && H5Sget_simple_extent_type(space) == H5S_SCALAR
            let count = Int(try site.check(H5Sget_simple_extent_npoints(space), "H5Sget_simple_extent_npoints"))

            func numbers<T: HDF5Scalar>(_: T.Type) throws -> [T] {
                guard let type = T.hdf5ElementType.nativeType, count > 0 else { return [] }
                return try [T](unsafeUninitializedCapacity: count) { buffer, initialized in
                    initialized = 0
                    try site.check(H5Aread(attribute, type, buffer.baseAddress), "H5Aread")
                    initialized = count
                }
            }
            switch try HDF5ElementType(describing: fileType, site: site) {
            case .signedInteger, .unsignedInteger:
                let values = try numbers(Int64.self)
                return isScalar ? .int64(values.first ?? 0) : .int64Array(values)
            case .float:
                let values = try numbers(Double.self)
                return isScalar ? .double(values.first ?? 0) : .doubleArray(values)
            case .string:
                let values = try readStrings(attribute, fileType: fileType, space: space, count: count, site: site)
                return isScalar ? .string(values.first ?? "") : .stringArray(values)
            case let other:
                throw site.error(.invalidArgument, "unsupported attribute type \(other)")
            }
        }
    }

    /// The names of the attributes of an object, sorted.
    /// - Parameter object: The path of the group or dataset; by default this group.
    public func attributeNames(of object: String = ".") throws -> [String] {
        try HDF5Library.locked {
            let (location, site) = try site("list attributes of", object)
            try requireExists(object, site)
            var info = H5O_info_t()
            try site.check(H5Oget_info_by_name2(location, object, &info, UInt32(H5O_INFO_NUM_ATTRS),
                                                shim_H5P_DEFAULT()), "H5Oget_info_by_name2")
            return try (0..<info.num_attrs).map { index in
                try readName(site: site, call: "H5Aget_name_by_idx") { buffer, size in
                    H5Aget_name_by_idx(location, object, H5_INDEX_NAME, H5_ITER_INC, index, buffer, size,
                                       shim_H5P_DEFAULT())
                }
            }
        }
    }

    /// Reads `count` fixed- or variable-length strings from an attribute.
    private func readStrings(_ attribute: hid_t, fileType: hid_t, space: hid_t, count: Int,
                             site: HDF5Site) throws -> [String] {
        guard count > 0 else { return [] }
        let memoryType = try site.check(H5Tcopy(shim_H5T_C_S1()), "H5Tcopy")
        defer { H5Tclose(memoryType) }
        let cset = H5Tget_cset(fileType)
        guard cset != H5T_CSET_ERROR else { throw site.failure("H5Tget_cset") }
        try site.check(H5Tset_cset(memoryType, cset), "H5Tset_cset")
        if try site.check(H5Tis_variable_str(fileType), "H5Tis_variable_str") > 0 {
            try site.check(H5Tset_size(memoryType, shim_H5T_VARIABLE()), "H5Tset_size")
            var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count)
            try site.check(H5Aread(attribute, memoryType, &pointers), "H5Aread")
            let values = pointers.map { $0.map { String(cString: $0) } ?? "" }
            try site.check(H5Dvlen_reclaim(memoryType, space, shim_H5P_DEFAULT(), &pointers), "H5Dvlen_reclaim")
            return values
        }
        let size = H5Tget_size(fileType)
        guard size > 0 else { throw site.failure("H5Tget_size") }
        try site.check(H5Tset_size(memoryType, size), "H5Tset_size")
        try site.check(H5Tset_strpad(memoryType, H5T_STR_NULLPAD), "H5Tset_strpad")
        var bytes = [UInt8](repeating: 0, count: size * count)
        try site.check(H5Aread(attribute, memoryType, &bytes), "H5Aread")
        return (0..<count).map { index in
            let string = bytes[index * size..<(index + 1) * size].prefix { $0 != 0 }
            return String(decoding: string, as: UTF8.self)
        }
    }
}
