#!/usr/bin/env pwsh
<#
.SYNOPSIS
    Shardwise build script for PowerShell (7+): forwards every command to build.sh.

.DESCRIPTION
    ./build.ps1 [command] [args...] runs ./build.sh [command] [args...] with bash: the same commands (run, test,
    bench, bench-mp, plan-validate, native, fault-trials, asan, fuzz, pack, samples, gpu-bundle, cuda12-check, deps, clean, help),
    the same arguments, the same environment variables (CONFIGURATION, SHARDWISE_*), the same output and the same
    exit code. build.sh is the one implementation of the commands; `./build.ps1 help` prints its list.

    Which bash: $env:SHARDWISE_BASH when set; else, on Windows, Git for Windows' bash (Git\bin\bash.exe beside
    git.exe, or under Program Files), then WSL's bash; elsewhere the bash on PATH. Without one, the error names what
    to install. The commands build for Linux (libshardwise.so, Debian packages): on Windows use WSL, or Git for
    Windows' bash with CMake, a C++ compiler and the .NET 10 SDK on its PATH.
#>
Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

function Find-Bash {
    if ($env:SHARDWISE_BASH) {
        if (-not (Test-Path -LiteralPath $env:SHARDWISE_BASH -PathType Leaf)) { throw "SHARDWISE_BASH='$env:SHARDWISE_BASH' does not exist" }
        return @{ Exe = $env:SHARDWISE_BASH; Wsl = $false }
    }
    if (-not $IsWindows) {
        $bash = Get-Command bash -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
        if ($bash) { return @{ Exe = $bash.Source; Wsl = $false } }
        throw 'bash not found on PATH: install bash (Debian/Ubuntu: apt-get install bash; macOS: it ships with the system)'
    }
    # Git for Windows: bin\bash.exe two levels above cmd\git.exe, or the default install folders.
    $candidates = @()
    $git = Get-Command git -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
    if ($git) { $candidates += Join-Path (Split-Path -Parent (Split-Path -Parent $git.Source)) 'bin\bash.exe' }
    foreach ($base in $env:ProgramFiles, ${env:ProgramFiles(x86)}, $env:LOCALAPPDATA) {
        if ($base) { $candidates += Join-Path $base 'Git\bin\bash.exe'; $candidates += Join-Path $base 'Programs\Git\bin\bash.exe' }
    }
    foreach ($candidate in $candidates) {
        if (Test-Path -LiteralPath $candidate -PathType Leaf) { return @{ Exe = $candidate; Wsl = $false } }
    }
    $wsl = Get-Command wsl.exe -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
    if ($wsl) { return @{ Exe = $wsl.Source; Wsl = $true } }
    throw 'no bash found: install Git for Windows (https://git-scm.com/download/win, it brings bash) or WSL (wsl --install), or set SHARDWISE_BASH to a bash.exe'
}

try {
    $bash = Find-Bash
}
catch {
    [Console]::Error.WriteLine("build.ps1: error: $($_.Exception.Message)")
    exit 1
}

$script = Join-Path $PSScriptRoot 'build.sh'
if ($bash.Wsl) {
    # WSL: run build.sh inside the Linux distribution, with the environment variables build.sh reads passed through
    # WSLENV (their names; /u: only from Windows to Linux).
    $names = @(Get-ChildItem env: | Where-Object { $_.Name -eq 'CONFIGURATION' -or $_.Name -like 'SHARDWISE_*' -or $_.Name -like 'SW_*' } |
        ForEach-Object { "$($_.Name)/u" })
    if ($names.Count -gt 0) { $env:WSLENV = (@($env:WSLENV) + $names | Where-Object { $_ }) -join ':' }
    $linuxScript = (& $bash.Exe wslpath -a ($script -replace '\\', '/')).Trim()
    & $bash.Exe bash $linuxScript @args
}
else {
    # The environment is inherited as it is; every argument is passed on unchanged.
    & $bash.Exe $script @args
}
exit $LASTEXITCODE
