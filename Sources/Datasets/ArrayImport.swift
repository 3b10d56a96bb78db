import Foundation
import HDF5

/// Reads rows to be sharded from an HDF5 file, a NumPy `.npy` file or a CSV file.
///
/// Every error names the file, and the row (and column) for bad values.
public enum ArrayImport {
    /// How the values are stored in the shards.
    public enum StoragePolicy: String, Sendable, CaseIterable {
        /// 8-bit input stays 8-bit, float input stays float; CSV numbers become 8-bit when all
        /// of them are whole numbers in 0...255, floats otherwise.
        case auto
        /// 8-bit: every value must be a whole number in 0...255.
        case uint8
        /// 32-bit floats.
        case float32
    }

    /// Where the label of a CSV row is.
    public enum LabelColumn: String, Sendable, CaseIterable { case last, first, none }

    // MARK: NumPy

    /// An array read from a `.npy` file.
    public struct NumPyArray: Sendable, Equatable {
        public enum Values: Sendable, Equatable {
            case uint8([UInt8]), float32([Float]), float64([Double]), int64([Int64]), int32([Int32])
        }
        public var shape: [Int]
        public var values: Values
    }

    /// Reads a `.npy` file (format version 1, 2 or 3), C order, of dtype `|u1`, `<f4`, `<f8`,
    /// `<i8` or `<i4`. The header is parsed here; no NumPy is needed.
    public static func readNumPy(_ path: String) throws -> NumPyArray {
        let data = try contents(of: path)
        func fail(_ problem: String) -> DatasetError { .file(path: path, problem: problem) }
        let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]   // \x93NUMPY
        guard data.count >= 10, Array(data.prefix(6)) == magic else { throw fail("not a NumPy .npy file (no \\x93NUMPY magic)") }
        let major = data[data.startIndex + 6]
        let headerLength: Int, headerStart: Int
        switch major {
        case 1:
            headerLength = Int(data[data.startIndex + 8]) | Int(data[data.startIndex + 9]) << 8
            headerStart = 10
        case 2, 3:
            guard data.count >= 12 else { throw fail("truncated .npy header") }
            headerLength = (0..<4).reduce(0) { $0 | Int(data[data.startIndex + 8 + $1]) << (8 * $1) }
            headerStart = 12
        default:
            throw fail(".npy format version \(major) is not supported (1, 2 or 3)")
        }
        guard data.count >= headerStart + headerLength else { throw fail("truncated .npy header") }
        let headerBytes = data[(data.startIndex + headerStart)..<(data.startIndex + headerStart + headerLength)]
        guard let header = String(bytes: headerBytes, encoding: major == 3 ? .utf8 : .isoLatin1) else {
            throw fail("unreadable .npy header")
        }
        // {'descr': '<f4', 'fortran_order': False, 'shape': (100, 1, 28, 28), }
        func value(of key: String) -> Substring? {
            for quote in ["'", "\""] {
                if let keyRange = header.range(of: "\(quote)\(key)\(quote)"),
                   let colon = header[keyRange.upperBound...].firstIndex(of: ":") {
                    return header[header.index(after: colon)...].drop { $0 == " " }
                }
            }
            return nil
        }
        guard let descrField = value(of: "descr"), let quote = descrField.first, quote == "'" || quote == "\"",
              let descrEnd = descrField.dropFirst().firstIndex(of: quote) else {
            throw fail(".npy header has no 'descr' (a structured dtype is not supported): \(header)")
        }
        let descr = String(descrField[descrField.index(after: descrField.startIndex)..<descrEnd])
        guard let fortran = value(of: "fortran_order") else { throw fail(".npy header has no 'fortran_order': \(header)") }
        if fortran.hasPrefix("True") {
            throw fail("the array is in Fortran order; save it with numpy.ascontiguousarray first")
        }
        guard let shapeField = value(of: "shape"), shapeField.first == "(", let close = shapeField.firstIndex(of: ")") else {
            throw fail(".npy header has no 'shape': \(header)")
        }
        var shape: [Int] = []
        for part in shapeField[shapeField.index(after: shapeField.startIndex)..<close].split(separator: ",") {
            let text = part.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "L", with: "")
            guard let n = Int(text), n >= 0 else { throw fail(".npy shape \(shapeField[...close]) is not a tuple of sizes") }
            shape.append(n)
        }
        let count = shape.reduce(1, *)
        let itemSize: Int
        switch descr {
        case "|u1", "<u1", "u1": itemSize = 1
        case "<f4", "<i4": itemSize = 4
        case "<f8", "<i8": itemSize = 8
        default:
            throw fail(".npy dtype '\(descr)' is not supported (|u1, <f4, <f8, <i8 or <i4, little-endian)")
        }
        let payload = data.count - headerStart - headerLength
        guard payload >= count * itemSize else {
            throw fail(".npy data has \(payload) bytes, shape \(shape) of '\(descr)' needs \(count * itemSize)")
        }
        let body = data.dropFirst(headerStart + headerLength)
        func load<T>(_ type: T.Type) -> [T] {
            [T](unsafeUninitializedCapacity: count) { buffer, initialized in
                body.withUnsafeBytes { raw in
                    // Little-endian host (x86-64, arm64): the bytes are the values.
                    UnsafeMutableRawBufferPointer(buffer).copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[0..<(count * itemSize)]))
                }
                initialized = count
            }
        }
        switch descr {
        case "<f4": return NumPyArray(shape: shape, values: .float32(load(Float.self)))
        case "<f8": return NumPyArray(shape: shape, values: .float64(load(Double.self)))
        case "<i8": return NumPyArray(shape: shape, values: .int64(load(Int64.self)))
        case "<i4": return NumPyArray(shape: shape, values: .int32(load(Int32.self)))
        default: return NumPyArray(shape: shape, values: .uint8(load(UInt8.self)))
        }
    }

    /// Rows from a `.npy` features file (first dimension = rows) and an optional `.npy` labels
    /// file (integers, one a row).
    public static func rowsFromNumPy(features path: String, labels labelsPath: String?, featureShape: [Int]? = nil,
                                     storage: StoragePolicy = .auto) throws -> DatasetRows {
        let array = try readNumPy(path)
        guard let rowCount = array.shape.first, array.shape.count >= 2 else {
            throw DatasetError.file(path: path, problem: "the array has shape \(array.shape); expected rows × features")
        }
        let shape = Array(array.shape.dropFirst())
        let values: FeatureValues
        switch array.values {
        case .uint8(let v): values = storage == .float32 ? .float32(v.map { Float($0) }) : .uint8(v)
        case .float32(let v): values = try convert(v.lazy.map { Double($0) }, path: path, width: shape.reduce(1, *), policy: storage, integral: false)
        case .float64(let v): values = try convert(v, path: path, width: shape.reduce(1, *), policy: storage, integral: false)
        case .int64(let v): values = try convert(v.lazy.map { Double($0) }, path: path, width: shape.reduce(1, *), policy: storage, integral: false)
        case .int32(let v): values = try convert(v.lazy.map { Double($0) }, path: path, width: shape.reduce(1, *), policy: storage, integral: false)
        }
        var labels: [Int64]?
        if let labelsPath {
            let labelArray = try readNumPy(labelsPath)
            let raw: [Int64]
            switch labelArray.values {
            case .int64(let v): raw = v
            case .int32(let v): raw = v.map { Int64($0) }
            case .uint8(let v): raw = v.map { Int64($0) }
            case .float32, .float64:
                throw DatasetError.file(path: labelsPath, problem: "labels must be integers (<i8, <i4 or |u1)")
            }
            guard labelArray.shape == [rowCount] || labelArray.shape == [rowCount, 1] else {
                throw DatasetError.file(path: labelsPath, problem: "labels have shape \(labelArray.shape) but \(path) has \(rowCount) rows")
            }
            labels = try checkLabels(raw, path: labelsPath)
        }
        return try rows(values, shape: shape, labels: labels, featureShape: featureShape, path: path)
    }

    // MARK: HDF5

    /// Rows from the datasets `features` (first dimension = rows; `uint8` stays 8-bit, other
    /// types are read as floats) and, if it exists, `labels` (integers) of an HDF5 file.
    public static func rowsFromHDF5(_ path: String, features: String = "x", labels: String? = "y",
                                    featureShape: [Int]? = nil, storage: StoragePolicy = .auto) throws -> DatasetRows {
        do {
            return try HDF5File.withFile(path) { file in
                guard try file.contains(features) else { throw DatasetError.file(path: path, problem: "no dataset /\(features)") }
                let info = try file.info(features)
                guard info.shape.count >= 2 else {
                    throw DatasetError.file(path: path, problem: "/\(features) has shape \(info.shape); expected rows × features")
                }
                let shape = Array(info.shape.dropFirst())
                let values: FeatureValues
                if info.elementType == .unsignedInteger(bits: 8) && storage != .float32 {
                    values = .uint8(try file.read(UInt8.self, from: features).values)
                } else {
                    switch info.elementType {
                    case .float, .signedInteger, .unsignedInteger: break
                    default: throw DatasetError.file(path: path, problem: "/\(features) holds \(info.elementType), not numbers")
                    }
                    let read = try file.read(Double.self, from: features).values
                    values = try convert(read, path: path, width: shape.reduce(1, *), policy: storage == .auto ? .float32 : storage,
                                         integral: false)
                }
                var labelValues: [Int64]?
                if let labels, try file.contains(labels) {
                    let labelInfo = try file.info(labels)
                    switch labelInfo.elementType {
                    case .signedInteger, .unsignedInteger: break
                    default: throw DatasetError.file(path: path, problem: "/\(labels) holds \(labelInfo.elementType); labels must be integers")
                    }
                    guard labelInfo.shape == [info.shape[0]] else {
                        throw DatasetError.file(path: path, problem: "/\(labels) has shape \(labelInfo.shape) but /\(features) has \(info.shape[0]) rows")
                    }
                    labelValues = try checkLabels(try file.read(Int64.self, from: labels).values, path: path)
                }
                return try rows(values, shape: shape, labels: labelValues, featureShape: featureShape, path: path)
            }
        } catch let error as HDF5Error {
            throw DatasetError.file(path: path, problem: error.kind == .notHDF5File ? "not an HDF5 file" : "\(error)")
        }
    }

    // MARK: CSV

    /// Rows from a CSV file of numbers (comma-separated; blank lines skipped). A first line
    /// with any field that is not a number is a header and skipped. The label column, if any,
    /// must hold whole numbers ≥ 0.
    public static func rowsFromCSV(_ path: String, labelColumn: LabelColumn = .last, featureShape: [Int]? = nil,
                                   storage: StoragePolicy = .auto) throws -> DatasetRows {
        let data = try contents(of: path)
        guard let text = String(data: data, encoding: .utf8) else { throw DatasetError.file(path: path, problem: "not a UTF-8 text file") }
        var values: [Double] = []
        var labels: [Int64] = []
        var width: Int?
        var dataRow = 0
        for (lineIndex, line) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            let fields = trimmed.split(separator: ",", omittingEmptySubsequences: false)
                .map { $0.trimmingCharacters(in: .whitespaces) }
            let numbers = fields.map { Double($0) }
            if lineIndex == 0 && numbers.contains(where: { $0 == nil }) { continue }   // header
            let lineNumber = lineIndex + 1
            if let bad = numbers.firstIndex(where: { $0 == nil }) {
                throw DatasetError.file(path: path, problem: "line \(lineNumber) (row \(dataRow)), column \(bad + 1): \"\(fields[bad])\" is not a number")
            }
            var row = numbers.compactMap { $0 }
            if labelColumn != .none {
                guard row.count >= 2 else {
                    throw DatasetError.file(path: path, problem: "line \(lineNumber) (row \(dataRow)) has \(row.count) column; need features and a label")
                }
                let label = labelColumn == .last ? row.removeLast() : row.removeFirst()
                guard label >= 0, label == label.rounded(), label < 9.2e18 else {
                    throw DatasetError.file(path: path, problem: "line \(lineNumber) (row \(dataRow)): label \(label) is not a whole number ≥ 0")
                }
                labels.append(Int64(label))
            }
            if let width, row.count != width {
                throw DatasetError.file(path: path, problem: "line \(lineNumber) (row \(dataRow)) has \(row.count) features, earlier rows \(width)")
            }
            width = row.count
            values.append(contentsOf: row)
            dataRow += 1
        }
        guard let width, dataRow > 0 else { throw DatasetError.file(path: path, problem: "no rows of numbers") }
        let converted = try convert(values, path: path, width: width, policy: storage, integral: true)
        return try rows(converted, shape: [width], labels: labelColumn == .none ? nil : labels, featureShape: featureShape, path: path)
    }

    // MARK: Helpers

    /// Reads a whole file, naming it in the error.
    static func contents(of path: String) throws -> Data {
        guard FileManager.default.fileExists(atPath: path) else { throw DatasetError.file(path: path, problem: "no such file") }
        do { return try Data(contentsOf: URL(fileURLWithPath: path), options: .mappedIfSafe) } catch {
            throw DatasetError.file(path: path, problem: "cannot read: \(error.localizedDescription)")
        }
    }

    /// Converts numbers to stored values: non-finite values are errors naming the row; `auto`
    /// chooses 8-bit only when `integral` (CSV) and every value is a whole number in 0...255.
    static func convert<S: Collection>(_ values: S, path: String, width: Int, policy: StoragePolicy,
                                       integral: Bool) throws -> FeatureValues where S.Element == Double {
        var allBytes = true
        for (index, value) in values.enumerated() {
            guard value.isFinite, abs(value) <= Double(Float.greatestFiniteMagnitude) else {
                throw DatasetError.file(path: path, problem: "row \(index / max(width, 1)), feature \(index % max(width, 1)) holds \(value)")
            }
            if allBytes && !(value >= 0 && value <= 255 && value == value.rounded()) {
                if policy == .uint8 {
                    throw DatasetError.file(path: path, problem: "row \(index / max(width, 1)), feature \(index % max(width, 1)): \(value) does not fit uint8 storage")
                }
                allBytes = false
            }
        }
        if policy == .uint8 || (policy == .auto && integral && allBytes) { return .uint8(values.map { UInt8($0) }) }
        return .float32(values.map { Float($0) })
    }

    /// Labels must not be negative.
    static func checkLabels(_ labels: [Int64], path: String) throws -> [Int64] {
        if let bad = labels.firstIndex(where: { $0 < 0 }) {
            throw DatasetError.file(path: path, problem: "row \(bad): label \(labels[bad]) is negative")
        }
        return labels
    }

    /// The rows, reshaped to `featureShape` when one is given.
    static func rows(_ values: FeatureValues, shape: [Int], labels: [Int64]?, featureShape: [Int]?, path: String) throws -> DatasetRows {
        let width = shape.reduce(1, *)
        // (rows, H, W) are single-channel images, not vectors: augmentation crops and flips them.
        var target = shape.count == 2 ? [1] + shape : shape
        if let featureShape {
            guard featureShape.reduce(1, *) == width, featureShape.allSatisfy({ $0 > 0 }) else {
                throw DatasetError.file(path: path, problem: "rows of \(width) values (shape \(shape)) cannot take feature shape \(featureShape)")
            }
            target = featureShape
        }
        do { return try DatasetRows(featureShape: target, values: values, labels: labels) } catch let error as DatasetError {
            throw DatasetError.file(path: path, problem: "\(error)")
        }
    }
}
