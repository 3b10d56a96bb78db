import Dispatch
import Tensor

/// Runs `body` on `0 ..< count` split into contiguous ranges, one per BLAS thread
/// (``BLASThreads/count``): the memory-bound passes between matrix products (Winograd's
/// transforms, im2col) use the cores the products use, and no more (one rank a core under MPI
/// runs them inline). Ranges are fixed by `count` and the thread count, and each writes its
/// own outputs, so the result does not depend on scheduling.
///
/// - Parameter minimumPerPart: no range is made smaller than this (default 1); below it the
///   call runs inline.
@inline(__always)
func parallelRanges(_ count: Int, minimumPerPart: Int = 1, _ body: (Range<Int>) -> Void) {
    parallelParts(count, minimumPerPart: minimumPerPart) { _, range in body(range) }
}

/// The number of parts ``parallelParts(_:minimumPerPart:_:)`` splits `count` items into.
@inline(__always)
func parallelPartCount(_ count: Int, minimumPerPart: Int = 1) -> Int {
    max(1, min(BLASThreads.count, count / max(minimumPerPart, 1)))
}

/// ``parallelRanges(_:minimumPerPart:_:)`` that also hands each range its part index
/// (`0 ..< parallelPartCount(count, minimumPerPart:)`), for per-part scratch buffers.
@inline(__always)
func parallelParts(_ count: Int, minimumPerPart: Int = 1, _ body: (Int, Range<Int>) -> Void) {
    runParts(parallelPartCount(count, minimumPerPart: minimumPerPart), of: count, body)
}

/// `body(part, range)` for `parts` contiguous ranges of `0 ..< count`, each on its own thread
/// (inline when `parts` ≤ 1).
@inline(__always)
private func runParts(_ parts: Int, of count: Int, _ body: (Int, Range<Int>) -> Void) {
    if parts <= 1 {
        body(0, 0 ..< count)
        return
    }
    withoutActuallyEscaping(body) { body in
        // Unchecked: the ranges are disjoint and the call returns only when all are done.
        let shared = UncheckedBody(body)
        DispatchQueue.concurrentPerform(iterations: parts) { part in
            shared.body(part, part * count / parts ..< (part + 1) * count / parts)
        }
    }
}

/// A closure handed to the threads of one ``runParts(_:of:_:)`` call.
private struct UncheckedBody: @unchecked Sendable {
    let body: (Int, Range<Int>) -> Void
    init(_ body: @escaping (Int, Range<Int>) -> Void) { self.body = body }
}

/// Runs `body(i)` for `i in 0 ..< count` over the BLAS threads (``BLASThreads/count``), with
/// BLAS on one thread meanwhile: many small matrix products side by side, each on one core,
/// instead of one after another each split over the cores (OpenBLAS wakes and joins its
/// threads at every call; Winograd's 36 products a chunk are 32 × 32 × 512 at a ResNet's first
/// stage). Each product writes its own output and OpenBLAS splits none along its inner
/// dimension, so the results do not depend on the split.
func parallelProducts(_ count: Int, _ body: (Int) -> Void) {
    let threads = BLASThreads.count, parts = min(threads, count)
    guard parts > 1 else {
        for i in 0..<count { body(i) }
        return
    }
    BLASThreads.set(1)
    defer { BLASThreads.set(threads) }
    runParts(parts, of: count) { _, range in
        for i in range { body(i) }
    }
}
