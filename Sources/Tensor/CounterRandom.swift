import RealModule

/// A counter-based random generator (Philox4x32-10, Salmon et al., SC'11): the draw at a
/// position is a pure function of (seed, stream, counter).
///
/// No draw depends on rank, world size, thread or the order in which draws are made, so every
/// rank of a job can draw the same initial parameters or projection directions without
/// communication, and a data row's augmentation is the same whichever rank reads it.
///
/// Conventions: the 64-bit seed is the Philox key; the 128-bit Philox counter is
/// (counter, stream). Streams separate uses (a parameter's name, a step's directions, …).
public struct CounterRandom: Sendable, Hashable {
    /// The key of the generator (the run's seed).
    public let seed: UInt64
    /// The stream within the seed.
    public let stream: UInt64

    public init(seed: UInt64, stream: UInt64 = 0) {
        self.seed = seed
        self.stream = stream
    }

    /// A generator on a stream named by a string (FNV-1a hash of its UTF-8), e.g. a parameter name.
    public init(seed: UInt64, streamName: String) {
        self.init(seed: seed, stream: CounterRandom.hash(streamName))
    }

    /// A stable 64-bit hash of a string (FNV-1a); unlike `Hasher`, the same in every process.
    public static func hash(_ text: String) -> UInt64 { FNV1a.hash(text) }

    /// The generator of a derived stream: `(stream, sub)` hashed into a new stream of the same seed.
    public func substream(_ sub: UInt64) -> CounterRandom {
        var h = stream ^ 0x9e37_79b9_7f4a_7c15
        h = (h ^ sub) &* 0xbf58_476d_1ce4_e5b9
        h = (h ^ (h >> 27)) &* 0x94d0_49bb_1331_11eb
        return CounterRandom(seed: seed, stream: h ^ (h >> 31))
    }

    // MARK: Philox4x32-10

    /// The four 32-bit words at `counter`.
    @inlinable
    public func block(_ counter: UInt64) -> SIMD4<UInt32> {
        CounterRandom.philox(counter: SIMD4(UInt32(truncatingIfNeeded: counter), UInt32(truncatingIfNeeded: counter >> 32),
                                            UInt32(truncatingIfNeeded: stream), UInt32(truncatingIfNeeded: stream >> 32)),
                             key: SIMD2(UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32)))
    }

    /// The Philox4x32 bijection with 10 rounds.
    @inlinable
    public static func philox(counter: SIMD4<UInt32>, key: SIMD2<UInt32>) -> SIMD4<UInt32> {
        // Scalars rather than SIMD lanes: the rounds are serial multiply–xor chains.
        var c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3]
        var k0 = key[0], k1 = key[1]
        for round in 0..<10 {
            if round > 0 {
                k0 &+= 0x9E37_79B9
                k1 &+= 0xBB67_AE85
            }
            let p0 = UInt64(0xD251_1F53) &* UInt64(c0)
            let p1 = UInt64(0xCD9E_8D57) &* UInt64(c2)
            let n0 = UInt32(truncatingIfNeeded: p1 >> 32) ^ c1 ^ k0
            let n2 = UInt32(truncatingIfNeeded: p0 >> 32) ^ c3 ^ k1
            c1 = UInt32(truncatingIfNeeded: p1)
            c3 = UInt32(truncatingIfNeeded: p0)
            c0 = n0
            c2 = n2
        }
        return SIMD4(c0, c1, c2, c3)
    }

    // MARK: Distributions

    /// The uniform draw in [0, 1) with 53 random bits at element `index`
    /// (element `i` uses half of the block at `i / 2`).
    @inlinable
    public func uniform(at index: UInt64) -> Double {
        let words = block(index / 2)
        let (hi, lo) = index % 2 == 0 ? (words[0], words[1]) : (words[2], words[3])
        return Double(((UInt64(hi) << 32) | UInt64(lo)) >> 11) * 0x1p-53
    }

    /// The standard normal draw at element `index` (Box–Muller on the block at `index / 2`:
    /// even elements take the cosine, odd the sine).
    @inlinable
    public func normal(at index: UInt64) -> Double {
        let words = block(index / 2)
        let u1 = Double(((UInt64(words[0]) << 32) | UInt64(words[1])) >> 11) * 0x1p-53
        let u2 = Double(((UInt64(words[2]) << 32) | UInt64(words[3])) >> 11) * 0x1p-53
        let radius = (-2 * Double.log(1 - u1)).squareRoot()   // 1 - u1 in (0, 1]
        let angle = 2 * Double.pi * u2
        return radius * (index % 2 == 0 ? Double.cos(angle) : Double.sin(angle))
    }

    /// Writes the normal draws of elements `start ..< start + output.count` (the values of
    /// ``normal(at:)``, computed a pair at a time).
    @inlinable
    public func normals<Scalar: BinaryFloatingPoint>(start: UInt64, into output: UnsafeMutableBufferPointer<Scalar>) {
        var i = 0
        while i < output.count {
            let index = start + UInt64(i)
            let (even, odd) = normalPair(block: index / 2)
            if index % 2 == 1 {
                output[i] = Scalar(odd)
                i += 1
            } else {
                output[i] = Scalar(even)
                if i + 1 < output.count { output[i + 1] = Scalar(odd) }
                i += 2
            }
        }
    }

    /// Writes single-precision standard normal draws of elements `start ..< start + output.count`:
    /// element `i` comes from block `i / 4`, whose four 32-bit words make two Box–Muller pairs
    /// in `Float` (words 0–1 give elements `4b` (cosine) and `4b + 1` (sine), words 2–3 give
    /// `4b + 2` and `4b + 3`), from 24-bit uniforms.
    ///
    /// Half the Philox blocks of ``normals(start:into:)`` and single-precision logarithm and
    /// trigonometry: for noise where `Float` resolution is all that is used (image
    /// augmentation), about four times faster. The values differ from ``normal(at:)``'s.
    @inlinable
    public func singlePrecisionNormals(start: UInt64, into output: UnsafeMutableBufferPointer<Float>) {
        var i = 0
        while i < output.count {
            let index = start + UInt64(i)
            let words = block(index / 4)
            let first = index % 4 < 2
            // Uniforms in (0, 1] for the radius and [0, 1) for the angle, 24 bits each.
            let u1 = Float((first ? words[0] : words[2]) >> 8 + 1) * 0x1p-24
            let u2 = Float((first ? words[1] : words[3]) >> 8) * 0x1p-24
            let radius = (-2 * Float.log(u1)).squareRoot()
            let angle = 2 * Float.pi * u2
            if index % 2 == 0 {
                output[i] = radius * Float.cos(angle)
                if i + 1 < output.count { output[i + 1] = radius * Float.sin(angle) }
                i += 2
            } else {
                output[i] = radius * Float.sin(angle)
                i += 1
            }
        }
    }

    /// Fills `tensor` with uniform draws in `[low, high)` from elements `start …`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func fillUniform<Scalar: TensorScalar>(_ tensor: Tensor<Scalar>, low: Double = 0, high: Double = 1,
                                                  start: UInt64 = 0) {
        tensor.withUnsafeMutableBufferPointer { p in
            for i in p.indices { p[i] = Scalar(low + (high - low) * uniform(at: start + UInt64(i))) }
        }
    }

    /// Fills `tensor` with normal draws of the given mean and standard deviation from elements `start …`.
    @_specialize(where Scalar == Float)
    @_specialize(where Scalar == Double)
    public func fillNormal<Scalar: TensorScalar>(_ tensor: Tensor<Scalar>, mean: Double = 0, standardDeviation: Double = 1,
                                                 start: UInt64 = 0) {
        tensor.withUnsafeMutableBufferPointer { p in
            // Elements 2b and 2b + 1 share block b: draw it once for both (the values of
            // `normal(at:)`, half the Philox blocks and logarithms).
            var i = 0
            while i < p.count {
                let index = start + UInt64(i)
                if index % 2 == 0 && i + 1 < p.count {
                    let (even, odd) = normalPair(block: index / 2)
                    p[i] = Scalar(mean + standardDeviation * even)
                    p[i + 1] = Scalar(mean + standardDeviation * odd)
                    i += 2
                } else {
                    p[i] = Scalar(mean + standardDeviation * normal(at: index))
                    i += 1
                }
            }
        }
    }

    /// The normal draws of elements `2·block` (cosine) and `2·block + 1` (sine): exactly
    /// `(normal(at: 2·block), normal(at: 2·block + 1))`.
    @inlinable
    public func normalPair(block index: UInt64) -> (Double, Double) {
        let words = block(index)
        let u1 = Double(((UInt64(words[0]) << 32) | UInt64(words[1])) >> 11) * 0x1p-53
        let u2 = Double(((UInt64(words[2]) << 32) | UInt64(words[3])) >> 11) * 0x1p-53
        let radius = (-2 * Double.log(1 - u1)).squareRoot()
        let angle = 2 * Double.pi * u2
        return (radius * Double.cos(angle), radius * Double.sin(angle))
    }

    /// A sequential generator reading this stream from `counter`, for the standard library's
    /// shuffles and random numbers.
    public func sequence(from counter: UInt64 = 0) -> CounterRandomSequence {
        CounterRandomSequence(generator: self, counter: counter)
    }
}

/// A `RandomNumberGenerator` walking one counter-based stream: each `next()` is one Philox block.
public struct CounterRandomSequence: RandomNumberGenerator, Sendable {
    public let generator: CounterRandom
    /// The next block to read.
    public private(set) var counter: UInt64

    public mutating func next() -> UInt64 {
        let words = generator.block(counter)
        counter &+= 1
        return (UInt64(words[0]) << 32) | UInt64(words[1])
    }
}
