// C boundary for OpenBLAS: CBLAS for matrix products and the few LAPACK routines
// (Fortran symbols, which OpenBLAS exports) needed for whitening and spectra.
#ifndef ANTICOLLAPSE_COPENBLAS_SHIM_H
#define ANTICOLLAPSE_COPENBLAS_SHIM_H
#include <cblas.h>

// LAPACK, column-major Fortran interface. Callers pass row-major matrices as their transposes.
void spotrf_(const char *uplo, const int *n, float *a, const int *lda, int *info);
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void strtri_(const char *uplo, const char *diag, const int *n, float *a, const int *lda, int *info);
void dtrtri_(const char *uplo, const char *diag, const int *n, double *a, const int *lda, int *info);
void ssyevd_(const char *jobz, const char *uplo, const int *n, float *a, const int *lda, float *w,
             float *work, const int *lwork, int *iwork, const int *liwork, int *info);
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w,
             double *work, const int *lwork, int *iwork, const int *liwork, int *info);

#endif
