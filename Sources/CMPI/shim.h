// C boundary for Open MPI. Swift cannot import MPI's handle macros (they expand to
// addresses of global structs), so each one we use is a static inline function here.
#ifndef ANTICOLLAPSE_CMPI_SHIM_H
#define ANTICOLLAPSE_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm shim_MPI_COMM_WORLD(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype shim_MPI_FLOAT(void) { return MPI_FLOAT; }
static inline MPI_Datatype shim_MPI_DOUBLE(void) { return MPI_DOUBLE; }
static inline MPI_Datatype shim_MPI_INT64_T(void) { return MPI_INT64_T; }
static inline MPI_Datatype shim_MPI_UINT8_T(void) { return MPI_UINT8_T; }
static inline MPI_Datatype shim_MPI_BYTE(void) { return MPI_BYTE; }
static inline MPI_Op shim_MPI_SUM(void) { return MPI_SUM; }
static inline MPI_Op shim_MPI_MAX(void) { return MPI_MAX; }
static inline MPI_Op shim_MPI_MIN(void) { return MPI_MIN; }
static inline void *shim_MPI_IN_PLACE(void) { return MPI_IN_PLACE; }
static inline int shim_MPI_SUCCESS(void) { return MPI_SUCCESS; }
static inline int shim_MPI_MAX_ERROR_STRING(void) { return MPI_MAX_ERROR_STRING; }
static inline int shim_MPI_THREAD_FUNNELED(void) { return MPI_THREAD_FUNNELED; }
static inline int shim_MPI_THREAD_SERIALIZED(void) { return MPI_THREAD_SERIALIZED; }
static inline MPI_Errhandler shim_MPI_ERRORS_RETURN(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Comm shim_MPI_COMM_NULL(void) { return MPI_COMM_NULL; }
static inline MPI_Info shim_MPI_INFO_NULL(void) { return MPI_INFO_NULL; }
static inline int shim_MPI_COMM_TYPE_SHARED(void) { return MPI_COMM_TYPE_SHARED; }
static inline MPI_Win shim_MPI_WIN_NULL(void) { return MPI_WIN_NULL; }
static inline int shim_MPI_MODE_NOCHECK(void) { return MPI_MODE_NOCHECK; }

#endif
