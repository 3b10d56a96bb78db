import Communication

/// Runs `body` on `worldSize` in-process ranks (threads) and returns their results in rank order.
///
/// A shorthand for ``ThreadCommunicator/run(worldSize:stackSize:_:)`` in tests: when one rank
/// throws, its peers are woken from their collectives and the first error is rethrown, so a
/// failing test fails instead of hanging.
/// - Parameters:
///   - worldSize: the number of ranks.
///   - body: the work of one rank, given its communicator.
public func runRanks<Value: Sendable>(_ worldSize: Int,
                                      _ body: @escaping @Sendable (ThreadCommunicator) throws -> Value) throws -> [Value] {
    try ThreadCommunicator.run(worldSize: worldSize, body)
}
