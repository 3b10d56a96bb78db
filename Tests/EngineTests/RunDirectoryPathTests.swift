import Engine
import XCTest

/// Where a run's checkpoints lie, and which run a checkpoint belongs to.
final class RunDirectoryPathTests: XCTestCase {
    func testACheckpointNamesItsRunOnlyFromARunsCheckpointFolder() {
        XCTAssertEqual(RunDirectory.checkpointsPath(of: "/runs/a"), "/runs/a/checkpoints")
        XCTAssertEqual(RunDirectory.containing(checkpoint: "/runs/a/checkpoints/ckpt-00000008.h5"), "/runs/a")
        XCTAssertEqual(RunDirectory.containing(checkpoint: "runs/a/checkpoints/ckpt-00000008.h5"), "runs/a")
        // From inside the run directory: the run is the working directory, not "".
        XCTAssertEqual(RunDirectory.containing(checkpoint: "checkpoints/ckpt-00000008.h5"), ".")
        XCTAssertNil(RunDirectory.containing(checkpoint: "/tmp/ckpt-00000008.h5"))
        XCTAssertNil(RunDirectory.containing(checkpoint: "ckpt-00000008.h5"))
        XCTAssertNil(RunDirectory.containing(checkpoint: "/runs/a/old-checkpoints/ckpt-00000008.h5"))
    }
}
