/// A config value chosen from a fixed set (an enum of strings); decoding an unknown one names
/// the valid choices: `unknown "transformer"; valid: mlp, convnet, resnet, vit`.
///
/// It lives in the lowest module so that every module's config types (layers, objectives,
/// optimizers, recipes) decode their choices the same way.
public protocol ConfigurationChoice: RawRepresentable<String>, CaseIterable, Codable, Sendable {}

extension ConfigurationChoice {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let value = Self(rawValue: text) else {
            throw DecodingError.dataCorrupted(.init(
                codingPath: decoder.codingPath,
                debugDescription: "unknown \"\(text)\"; valid: \(Self.validChoices)"))
        }
        self = value
    }

    /// The valid spellings, comma-separated.
    public static var validChoices: String { allCases.map(\.rawValue).joined(separator: ", ") }
}
