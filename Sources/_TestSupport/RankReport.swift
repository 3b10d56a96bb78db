import Communication
import Foundation

/// The one JSON line that each rank of an `MPIHarness` scenario prints on standard output.
///
/// `{"rank":r,"size":n,"scenario":"collectives","values":{"sumFloat":[…], …}}`: the harness
/// encodes it, ``MPIRun/launch(executable:ranks:arguments:launcher:timeout:)`` decodes it, and the tests
/// compare the `values` of every rank with what a single process computes.
public struct RankReport: Codable, Sendable, Equatable {
    /// The rank that printed the report.
    public var rank: Int
    /// The world size of the job.
    public var size: Int
    /// The name of the scenario that ran.
    public var scenario: String
    /// The scenario's named results.
    public var values: [String: JSONValue]

    public init(rank: Int, size: Int, scenario: String, values: [String: JSONValue]) {
        self.rank = rank
        self.size = size
        self.scenario = scenario
        self.values = values
    }

    /// The report as one line of JSON with sorted keys (no trailing newline).
    public func jsonLine() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    /// The value named `key`, converted to floating-point numbers.
    /// - Throws: ``RankReportError`` when the key is missing or holds something else.
    public func doubles(_ key: String) throws -> [Double] {
        try array(key).map { element in
            switch element {
            case let .number(value): return value
            case let .integer(value): return Double(value)
            default: throw RankReportError.wrongType(key: key, rank: rank, found: element)
            }
        }
    }

    /// The value named `key`, converted to integers.
    /// - Throws: ``RankReportError`` when the key is missing or holds something other than integers.
    public func integers(_ key: String) throws -> [Int64] {
        try array(key).map { element in
            switch element {
            case let .integer(value): return value
            case let .number(value) where value.rounded() == value && abs(value) < 0x1p63: return Int64(value)
            default: throw RankReportError.wrongType(key: key, rank: rank, found: element)
            }
        }
    }

    private func array(_ key: String) throws -> [JSONValue] {
        guard let value = values[key] else { throw RankReportError.missing(key: key, rank: rank) }
        guard case let .array(elements) = value else {
            throw RankReportError.wrongType(key: key, rank: rank, found: value)
        }
        return elements
    }
}

/// A rank report lacks a value, or holds one of another type.
public enum RankReportError: Error, CustomStringConvertible {
    case missing(key: String, rank: Int)
    case wrongType(key: String, rank: Int, found: JSONValue)

    public var description: String {
        switch self {
        case let .missing(key, rank): return "the report of rank \(rank) has no value \"\(key)\""
        case let .wrongType(key, rank, found): return "value \"\(key)\" of rank \(rank) has an unexpected type: \(found)"
        }
    }
}

/// A JSON value, as the scenarios of `MPIHarness` report them.
///
/// Integers are kept apart from floating-point numbers so that `Int64` values survive exactly;
/// `Float` values are stored as the `Double` of the same value, which JSON carries exactly.
public enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// The array of `values`: integers for `Int64` and `UInt8`, numbers for `Float` and `Double`.
    public init<Element: CommunicableScalar>(_ values: [Element]) {
        self = .array(values.map { value in
            switch value {
            case let value as Float: return .number(Double(value))
            case let value as Double: return .number(value)
            case let value as Int64: return .integer(value)
            case let value as UInt8: return .integer(Int64(value))
            default: return .string("\(value)")
            }
        })
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .integer(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case let .bool(value): try container.encode(value)
        case let .integer(value): try container.encode(value)
        case let .number(value): try container.encode(value)
        case let .string(value): try container.encode(value)
        case let .array(value): try container.encode(value)
        case let .object(value): try container.encode(value)
        }
    }
}
