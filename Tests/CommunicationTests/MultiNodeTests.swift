import Foundation
import XCTest
import _TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// ``MPICommunicator`` across two nodes, simulated on this machine: two network namespaces
/// joined by a veth pair (`launch/netns/up`), `mpirun` in the first, the second node's daemon
/// started through `mpirun`'s rsh agent (`launch/netns/rsh-agent`, which enters the namespace
/// where `ssh` would log in to a host). The ranks share nothing but a TCP link, as on a cluster.
///
/// Needs root and `ip netns` (iproute2); it skips otherwise, and where a container may not
/// create namespaces. That is the only skip of the suite: everything else fails loudly.
/// Every step has a timeout (at most 50 s in all; the test takes about 3 s), and the namespaces
/// are removed even when the test fails or a job is killed.
final class MultiNodeTests: XCTestCase {
    /// The root of this checkout, which holds `launch/netns/`.
    private static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func testCollectivesAcrossTwoNetworkNamespaces() throws {
        try MPIRun.requireAvailable()
        let nodes = try TwoNodes(testCase: self, repository: Self.repository)
        let launcher = MPIRun.Launcher(
            program: Self.repository.appendingPathComponent("launch/netns/mpirun").path,
            options: ["--hostfile", nodes.hostfile.path, "--mca", "btl", "tcp,self"],
            environment: ["ANTICOLLAPSE_NETNS": nodes.name])

        // Each rank runs in the namespace of its node, and MPI sees two nodes of one rank each.
        let places = try MPIRun.launch(executable: "MPIHarness", ranks: 2, arguments: ["whereami"],
                                       launcher: launcher, timeout: 15)
        let ownNamespace = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")
        for report in places {
            XCTAssertEqual(report.values["networkNamespace"], .string("net:[\(nodes.namespaceInodes[report.rank])]"),
                           "rank \(report.rank) should run in \(nodes.namespaces[report.rank])")
            XCTAssertNotEqual(report.values["networkNamespace"], .string(ownNamespace))
            XCTAssertEqual(report.values["node"], .array([.integer(0), .integer(1)]), "rank \(report.rank)")
        }

        // Every collective over TCP, several chunks a buffer (the harness's --max-chunk).
        let count = 1000
        let reports = try MPIRun.launch(executable: "MPIHarness", ranks: 2,
                                        arguments: ["collectives", "--count", "\(count)", "--max-chunk", "256"],
                                        launcher: launcher, timeout: 15)
        let expected = try roundTripped(CollectivesFixture.expected(size: 2, count: count))
        for report in reports {
            XCTAssertEqual(report.scenario, "collectives")
            XCTAssertEqual(report.size, 2)
            XCTAssertEqual(Set(report.values.keys), Set(expected.keys).union(["node"]), "rank \(report.rank)")
            XCTAssertEqual(report.values["node"], .array([.integer(0), .integer(1)]), "rank \(report.rank)")
            for (key, value) in expected.sorted(by: { $0.key < $1.key }) {
                XCTAssertEqual(report.values[key], value, "rank \(report.rank), \(key)")
            }
        }
    }

    /// `values` as they come back from a JSON line (whole numbers decode as integers).
    private func roundTripped(_ values: [String: JSONValue]) throws -> [String: JSONValue] {
        let line = try RankReport(rank: 0, size: 1, scenario: "", values: values).jsonLine()
        return try JSONDecoder().decode(RankReport.self, from: Data(line.utf8)).values
    }
}

/// Two network namespaces made by `launch/netns/up` for one test, removed by `launch/netns/down`
/// when the test ends, whether it passed, failed or threw.
private struct TwoNodes {
    /// The name given to `launch/netns/up`, unique to this test run.
    let name: String
    /// `<name>-0` and `<name>-1`: the namespace of rank 0's node, then rank 1's.
    let namespaces: [String]
    /// The inode of each namespace, as `/proc/<pid>/ns/net` shows it (`net:[inode]`).
    let namespaceInodes: [UInt64]
    /// The hostfile that `launch/netns/up` printed: one address a node, one slot each.
    let hostfile: URL

    /// Creates the namespaces, or throws `XCTSkip` when this machine cannot.
    init(testCase: XCTestCase, repository: URL) throws {
        guard getuid() == 0 else {
            throw XCTSkip("several nodes are simulated with network namespaces (ip netns add), which needs root")
        }
        let searchPath = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/sbin:/sbin"
        guard searchPath.split(separator: ":").contains(where: { FileManager.default.isExecutableFile(atPath: "\($0)/ip") })
        else {
            throw XCTSkip("several nodes are simulated with network namespaces: install iproute2 for `ip netns`")
        }

        name = "ac" + UUID().uuidString.prefix(8).lowercased()
        namespaces = [name + "-0", name + "-1"]
        let scripts = repository.appendingPathComponent("launch/netns")
        let environment = ProcessInfo.processInfo.environment
        // Registered before anything exists, so that a half-made pair is removed too.
        let name = self.name
        testCase.addTeardownBlock {
            do {
                let down = try MPIRun.spawn(scripts.appendingPathComponent("down").path, arguments: [name],
                                            environment: environment, timeout: 10)
                XCTAssertEqual(down.exitStatus, 0, "launch/netns/down \(name) failed\n\(down.combinedOutput)")
            } catch {
                XCTFail("launch/netns/down \(name): \(error)")
            }
        }

        let up = try MPIRun.spawn(scripts.appendingPathComponent("up").path, arguments: [name],
                                  environment: environment, timeout: 10)
        if up.exitStatus == 3 {
            throw XCTSkip("this machine cannot create network namespaces: \(up.standardError)")
        }
        guard up.exitStatus == 0, !up.timedOut else {
            throw NetworkNamespaceError(description: "launch/netns/up \(name) exited with status \(up.exitStatus)"
                                        + (up.timedOut ? " (timed out)" : "") + "\n\(up.combinedOutput)")
        }
        hostfile = try temporaryDirectory(for: testCase, prefix: "multinode").appendingPathComponent("hosts")
        try up.standardOutput.write(to: hostfile, atomically: true, encoding: .utf8)
        namespaceInodes = try namespaces.map { namespace in
            var status = stat()
            guard stat("/run/netns/\(namespace)", &status) == 0 || stat("/var/run/netns/\(namespace)", &status) == 0 else {
                throw NetworkNamespaceError(description: "launch/netns/up made no /run/netns/\(namespace): "
                                            + String(cString: strerror(errno)))
            }
            return UInt64(status.st_ino)
        }
    }
}

/// `launch/netns/up` failed on a machine that can create network namespaces.
private struct NetworkNamespaceError: Error, CustomStringConvertible {
    let description: String
}
