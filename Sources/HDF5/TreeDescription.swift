// A readable listing of a file's contents, like `h5ls -r -v`: what `anticollapse inspect` prints.

extension HDF5Group {
    /// Describes this group and everything below it as an indented tree.
    ///
    /// Each group is listed as `name/`, each dataset as `name: type [shape]` followed by its
    /// chunk shape and filters, and each attribute as `@name = value` under its owner, strings
    /// quoted and long arrays abbreviated. For example:
    ///
    ///     /data/run.h5
    ///     /
    ///       @version = 2
    ///       train/
    ///         images: uint8 [50000, 32, 32, 3], chunks [256, 32, 32, 3], gzip(4)
    ///           @source = "cifar10"
    ///
    /// Attributes of a type this module does not read are shown as `<type>`.
    /// - Returns: The description, one line per group, dataset and attribute, ending in a newline.
    public func describeTree() throws -> String {
        try HDF5Library.locked {
            var lines = [filePath, path]
            func describeAttributes(of object: String, depth: Int) throws {
                let indent = String(repeating: "  ", count: depth)
                for name in try attributeNames(of: object) {
                    let value: String
                    do {
                        value = try attribute(name, of: object).description
                    } catch let error as HDF5Error where error.kind == .invalidArgument {
                        value = "<\(error.reason.replacingPrefix("unsupported attribute type ", with: ""))>"
                    }
                    lines.append("\(indent)@\(name) = \(value)")
                }
            }
            try describeAttributes(of: path, depth: 1)
            let baseDepth = path.split(separator: "/").count
            for entry in try walk() {
                let depth = entry.path.split(separator: "/").count - baseDepth
                let indent = String(repeating: "  ", count: depth)
                switch entry.kind {
                case .group:
                    lines.append("\(indent)\(entry.name)/")
                case .dataset:
                    let info = try info(entry.path)
                    var line = "\(indent)\(entry.name): \(info.elementType) "
                        + (info.shape.isEmpty ? "scalar" : "\(info.shape)")
                    if let chunks = info.chunks { line += ", chunks \(chunks)" }
                    for filter in info.filters { line += ", \(filter)" }
                    lines.append(line)
                case .other:
                    lines.append("\(indent)\(entry.name) (not a group or dataset)")
                    continue
                }
                try describeAttributes(of: entry.path, depth: depth + 1)
            }
            return lines.joined(separator: "\n") + "\n"
        }
    }
}

extension String {
    /// This string without `prefix`, followed by `replacement`, if it starts with `prefix`.
    fileprivate func replacingPrefix(_ prefix: String, with replacement: String) -> String {
        hasPrefix(prefix) ? replacement + dropFirst(prefix.count) : self
    }
}
