/*
 * Shared definitions of the public API: the export marker and forward declarations of the handful of opaque
 * types that appear in more than one public header. Nothing here allocates or does I/O.
 */
#ifndef FERRY_COMMON_H
#define FERRY_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define FERRY_API __attribute__((visibility("default")))
#define FERRY_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define FERRY_API
#define FERRY_PRINTF(fmt, args)
#endif

#define FERRY_VERSION_MAJOR 0
#define FERRY_VERSION_MINOR 1
#define FERRY_VERSION_MICRO 0

typedef struct FerryError FerryError;
/* The engine instance: RAM blocks, state sections, parameters and the state of both migration directions. */
typedef struct FerryMigration FerryMigration;
typedef struct FerryRamBlock FerryRamBlock;
typedef struct FerryVisitor FerryVisitor;
typedef struct FerryHost FerryHost;

#endif
