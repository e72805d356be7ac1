/* The check macros of the C ABI checks (c_api_check.c, c_api_args_check.c, cuda_dispatch_check_internal.cpp): CHECK
 * counts and reports a failed condition with its file and line, OK checks that a call returned SW_OK (naming the call,
 * its status and sw_last_error()). One translation unit per program includes it: `failures` is that program's count. */
#pragma once
#include "shardwise.h"

#include <stdio.h>

static int failures = 0;

#define CHECK(cond, ...)                                                                                 \
    do {                                                                                                 \
        if (!(cond)) {                                                                                   \
            ++failures;                                                                                  \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                         \
            fprintf(stderr, __VA_ARGS__);                                                                \
            fprintf(stderr, "\n");                                                                       \
        }                                                                                                \
    } while (0)

#define OK(call)                                                                                         \
    do {                                                                                                 \
        sw_status st_ = (call);                                                                          \
        CHECK(st_ == SW_OK, "%s -> %s: %s", #call, sw_status_string(st_), sw_last_error());              \
    } while (0)
