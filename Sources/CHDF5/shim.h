// C boundary for HDF5. The H5T_NATIVE_* and H5P_* names are macros over global ids that
// are only valid after H5open(); Swift cannot import them, so they are functions here.
#ifndef ANTICOLLAPSE_CHDF5_SHIM_H
#define ANTICOLLAPSE_CHDF5_SHIM_H
#include <hdf5.h>

static inline hid_t shim_H5T_NATIVE_FLOAT(void) { H5open(); return H5T_NATIVE_FLOAT; }
static inline hid_t shim_H5T_NATIVE_DOUBLE(void) { H5open(); return H5T_NATIVE_DOUBLE; }
static inline hid_t shim_H5T_NATIVE_INT64(void) { H5open(); return H5T_NATIVE_INT64; }
static inline hid_t shim_H5T_NATIVE_UINT8(void) { H5open(); return H5T_NATIVE_UINT8; }
static inline hid_t shim_H5T_NATIVE_INT32(void) { H5open(); return H5T_NATIVE_INT32; }
static inline hid_t shim_H5T_NATIVE_INT8(void) { H5open(); return H5T_NATIVE_INT8; }
static inline hid_t shim_H5T_NATIVE_INT16(void) { H5open(); return H5T_NATIVE_INT16; }
static inline hid_t shim_H5T_NATIVE_UINT16(void) { H5open(); return H5T_NATIVE_UINT16; }
static inline hid_t shim_H5T_NATIVE_UINT32(void) { H5open(); return H5T_NATIVE_UINT32; }
static inline hid_t shim_H5T_NATIVE_UINT64(void) { H5open(); return H5T_NATIVE_UINT64; }
static inline hid_t shim_H5T_C_S1(void) { H5open(); return H5T_C_S1; }
static inline hid_t shim_H5P_DEFAULT(void) { return H5P_DEFAULT; }
static inline hid_t shim_H5P_DATASET_CREATE(void) { H5open(); return H5P_DATASET_CREATE; }
static inline hid_t shim_H5P_LINK_CREATE(void) { H5open(); return H5P_LINK_CREATE; }
static inline hid_t shim_H5P_DATASET_ACCESS(void) { H5open(); return H5P_DATASET_ACCESS; }
static inline hid_t shim_H5P_FILE_ACCESS(void) { H5open(); return H5P_FILE_ACCESS; }
static inline hid_t shim_H5P_FILE_CREATE(void) { H5open(); return H5P_FILE_CREATE; }
static inline hid_t shim_H5S_ALL(void) { return H5S_ALL; }
static inline hid_t shim_H5E_DEFAULT(void) { return H5E_DEFAULT; }
static inline unsigned shim_H5F_ACC_TRUNC(void) { return H5F_ACC_TRUNC; }
static inline unsigned shim_H5F_ACC_EXCL(void) { return H5F_ACC_EXCL; }
static inline unsigned shim_H5F_ACC_RDONLY(void) { return H5F_ACC_RDONLY; }
static inline unsigned shim_H5F_ACC_RDWR(void) { return H5F_ACC_RDWR; }
static inline size_t shim_H5T_VARIABLE(void) { return H5T_VARIABLE; }
static inline hsize_t shim_H5S_UNLIMITED(void) { return H5S_UNLIMITED; }

/// Turns off HDF5's automatic error-stack printing (we raise Swift errors instead).
static inline void shim_H5_silence_errors(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

#endif
