// swift-tools-version:6.0
// AntiCollapse — data-parallel self-supervised learning whose batch statistics are exact
// across any number of MPI ranks.

import PackageDescription

// Numeric code is generic over Float and Double (Double for finite-difference checks).
// Whole-program cross-module optimisation lets the trainer's Float call sites specialise
// the generic kernels of the library modules.
//
// `ANTICOLLAPSE_MARCH` (a clang `-march` value, e.g. `x86-64-v3`) sets the instruction set of
// that code; launch/setup exports `x86-64-v3` on a CPU that has it (AVX2, FMA), so our own loops
// (activations, norms, softmax) run on 256-bit vectors. Unset or empty: the compiler's baseline
// (SSE2 on x86-64), which runs on every x86-64 machine. The results are the same bit for bit
// either way: Swift never fuses a multiply and an add on its own, and sums keep their order.
let march = Context.environment["ANTICOLLAPSE_MARCH"].flatMap { $0.isEmpty ? nil : $0 }
let numericSettings: [SwiftSetting] = [
    .unsafeFlags(["-cross-module-optimization"], .when(configuration: .release)),
] + (march.map { [.unsafeFlags(["-Xcc", "-march=\($0)"])] } ?? [])

let package = Package(
    name: "AntiCollapse",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "anticollapse", targets: ["anticollapse"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-numerics", from: "1.0.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // MARK: C boundaries (system libraries found through pkg-config)
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5",
                       providers: [.apt(["libhdf5-dev", "hdf5-tools"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CJPEG", pkgConfig: "libjpeg", providers: [.apt(["libjpeg62-turbo-dev"])]),

        // MARK: Core
        .target(name: "Tensor",
                dependencies: ["COpenBLAS", .product(name: "RealModule", package: "swift-numerics")],
                swiftSettings: numericSettings),
        .target(name: "Communication", dependencies: ["CMPI"], swiftSettings: numericSettings),
        .target(name: "HDF5", dependencies: ["CHDF5"], swiftSettings: numericSettings),

        // MARK: Learning
        .target(name: "Layers", dependencies: ["Tensor", "Communication"], swiftSettings: numericSettings),
        .target(name: "Optimizers", dependencies: ["Tensor", "Communication", "Layers"],
                swiftSettings: numericSettings),
        .target(name: "Objectives", dependencies: ["Tensor", "Communication"], swiftSettings: numericSettings),

        // MARK: Data
        .target(name: "Datasets", dependencies: ["Tensor", "Communication", "HDF5", "Imaging"],
                swiftSettings: numericSettings),
        /// PNG encoding (zlib); PNG and JPEG decoding (libpng, libjpeg-turbo), resizing.
        .target(name: "Imaging", dependencies: ["CZlib", "CPNG", "CJPEG"], swiftSettings: numericSettings),
        .target(name: "Environments", dependencies: ["Tensor", "Datasets"], swiftSettings: numericSettings),

        // MARK: Training: the engine, its recipes, evaluation and benchmarks
        /// The generic training loop over a `Recipe`, one `TrainStep`, the run configuration,
        /// checkpoints as named state groups, metrics sinks.
        .target(name: "Engine",
                dependencies: ["Tensor", "Communication", "HDF5", "Layers", "Optimizers", "Objectives",
                               .product(name: "Yams", package: "Yams")],
                swiftSettings: numericSettings),
        /// The joint-embedding recipe: encoder/projector, views, an objective, the online probe.
        .target(name: "JointEmbedding",
                dependencies: ["Tensor", "Communication", "Layers", "Optimizers", "Objectives", "Datasets", "Engine", "Imaging"],
                swiftSettings: numericSettings),
        /// The world-model recipe: encoder, projector, action encoder, predictor; MSE + SIGReg.
        .target(name: "WorldModel",
                dependencies: ["Tensor", "Communication", "Layers", "Optimizers", "Objectives", "Datasets", "Environments", "Engine"],
                swiftSettings: numericSettings),
        .target(name: "Evaluation",
                dependencies: ["Tensor", "Communication", "HDF5", "Layers", "Optimizers", "Objectives", "Datasets", "Engine",
                               "JointEmbedding", "CZlib"],
                swiftSettings: numericSettings),
        /// `anticollapse bench`: step, objective, comm, data, checkpoint; the scaling model.
        .target(name: "Performance",
                dependencies: ["Tensor", "Communication", "HDF5", "Layers", "Optimizers", "Objectives", "Datasets", "Engine",
                               "JointEmbedding", "CZlib"],
                swiftSettings: numericSettings),

        // MARK: Command line
        .executableTarget(
            name: "anticollapse",
            dependencies: ["Engine", "JointEmbedding", "WorldModel", "Performance", "Evaluation", "Objectives", "Environments", "Imaging",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: numericSettings),
        /// Runs one named distributed scenario on every MPI rank and prints one JSON line a rank;
        /// the tests launch it under `mpirun` and compare the ranks with a single process.
        .executableTarget(name: "MPIHarness",
                          dependencies: ["Tensor", "Communication", "HDF5", "Layers", "Objectives", "WorldModel", "_TestSupport"],
                          swiftSettings: numericSettings),

        // MARK: Tests
        .target(name: "_TestSupport", dependencies: ["Tensor", "Communication", "HDF5", "Layers", "Optimizers", "Objectives",
                                                     "WorldModel"],
                swiftSettings: numericSettings),
        .testTarget(name: "TensorTests", dependencies: ["Tensor", "_TestSupport"]),
        .testTarget(name: "CommunicationTests", dependencies: ["Communication", "_TestSupport", "MPIHarness"]),
        .testTarget(name: "HDF5Tests", dependencies: ["HDF5", "_TestSupport"]),
        .testTarget(name: "LayersTests", dependencies: ["Layers", "Optimizers", "_TestSupport", "MPIHarness"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "ObjectivesTests", dependencies: ["Objectives", "_TestSupport", "MPIHarness"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "DatasetsTests", dependencies: ["Datasets", "Imaging", "HDF5", "_TestSupport"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "EnvironmentsTests", dependencies: ["Environments", "Datasets", "HDF5", "Imaging", "_TestSupport"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "JointEmbedding", "Datasets", "HDF5", "Objectives", "_TestSupport"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "JointEmbeddingTests", dependencies: ["Engine", "JointEmbedding", "_TestSupport"]),
        .testTarget(name: "WorldModelTests",
                    dependencies: ["WorldModel", "Engine", "Environments", "Datasets", "Layers", "Objectives", "_TestSupport",
                                   "MPIHarness"]),
        .testTarget(name: "PerformanceTests", dependencies: ["Performance", "Engine", "JointEmbedding", "_TestSupport"]),
        .testTarget(name: "EvaluationTests", dependencies: ["Evaluation", "Engine", "Layers", "Datasets", "JointEmbedding", "_TestSupport"]),
        .testTarget(name: "CommandLineTests",
                    dependencies: ["anticollapse", "Engine", "JointEmbedding", "Objectives", "Datasets", "Imaging", "_TestSupport"]),
    ]
)
