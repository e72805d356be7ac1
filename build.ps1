#!/usr/bin/env pwsh
<#
.SYNOPSIS
    Shardwise build script for PowerShell (7+): the same commands as build.sh.

.DESCRIPTION
    ./build.ps1 [run [args...]]   deps, native build, dotnet build, then the main job (bench exe `main`)
    ./build.ps1 test [args...]    deps, native build + ctest, dotnet build, NUnit tests, then the TorchSharp
                                  interop tests (tests/TorchSharp, outside the solution); prints
                                  "N passed, N failed, N skipped" as its last line (NUnit + TorchSharp + ctest)
    ./build.ps1 bench [args...]   deps, builds, then BenchmarkDotNet (bench exe `bench` + args)
    ./build.ps1 bench-mp [N] [tcp|mpi]  deps, builds, then the multi-process collective bandwidth report: N ranks
                                  (default 2), one process each, over TCP (shardwise launch, default) or MPI
                                  (mpirun); all-reduce, all-gather, reduce-scatter, 8 B x4 up to 64 MiB (the last
                                  size is 32 MiB, as nccl-tests -b 8 -e 64M -f 4), with nccl-tests' size, count,
                                  time, algbw and busbw (docs/distributed.md); SW_BW_MAX_BYTES (e.g. 1M),
                                  SW_BW_MIN_BYTES, SW_BW_ITERS (20), SW_BW_WARMUP (5), SW_BW_IN_PLACE (1: all-reduce in place)
    ./build.ps1 native            deps and the native library (CMake configure + build) only
    ./build.ps1 fault-trials [N]  Linux only (signals, mpirun): runs scripts/fault-trials.sh after the native build,
                                  as ./build.sh fault-trials (docs/testing.md)
    ./build.ps1 pack              deps, native build, NuGet packages Shardwise.Bindings and Shardwise.Parallel into
                                  artifacts/packages (native library under runtimes/<rid>/native: linux-x64, or
                                  win-x64 on Windows), and a check of what each package contains
    ./build.ps1 samples           pack, then the samples (each verifies its result, non-zero exit on mismatch):
                                  PackageSample (restores the packages from artifacts/packages), AotSample
                                  (NativeAOT publish, zero trim/AOT warnings allowed, then runs the executable),
                                  PInvokeSample (the C ABI through its own LibraryImport declarations)
    ./build.ps1 gpu-bundle [OUT]  self-contained test + bench bundle for a CUDA machine (Linux; see build.sh)
    ./build.ps1 cuda12-check      compile check of the CUDA plugin with CUDA 12 for sm_80/sm_90/sm_90a (Debian;
                                  see build.sh); exit code 77 when the toolkit cannot be downloaded
    ./build.ps1 asan [args]       ASan+UBSan build of the native checks and the NUnit suite against it (Linux, gcc;
                                  forwarded to build.sh asan)
    ./build.ps1 fuzz [SECONDS]    libFuzzer over the C ABI (Linux and clang-14 only; forwarded to build.sh fuzz)
    ./build.ps1 deps              install missing system packages only (Debian/Ubuntu; no-op elsewhere)
    ./build.ps1 clean             remove build outputs
    ./build.ps1 help              this list

    Arguments after the command go to the test executable (test), BenchmarkDotNet (bench) or the main job
    (run), e.g. ./build.ps1 test --filter 'FullyQualifiedName~Smoke' or ./build.ps1 bench --filter '*'.

    Environment: CONFIGURATION (Release), SHARDWISE_BUILD_DIR (build/native), SHARDWISE_JOBS (cores),
    SHARDWISE_SKIP_DEPS=1 (skip the dependency step), SHARDWISE_CTEST_TIMEOUT (900 s per native check),
    SHARDWISE_SKIP_TORCHSHARP=1 (leave out the TorchSharp interop tests, whose restore downloads libtorch),
    SHARDWISE_INSTALL_CUDA=1 (Linux: the deps step installs Debian's CUDA toolkit and clang-14 when nvcc is
    missing, so that the CUDA plugin is compiled without a GPU; as build.sh), SHARDWISE_VERSION (package version
    for pack/samples; default: Version in Directory.Build.props), SHARDWISE_REPOSITORY_URL (repository URL written
    into the packages; default none).
    On Windows the native library is shardwise.dll and multi-config generators are handled
    (cmake --build --config, ctest -C).
#>
param(
    [Parameter(Position = 0)]
    [string] $Command = 'run',

    [Parameter(Position = 1, ValueFromRemainingArguments = $true)]
    [string[]] $Arguments = @()
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
# Native commands report failure through $LASTEXITCODE, checked by Invoke-Checked.
$PSNativeCommandUseErrorActionPreference = $false

# ------------------------------------------------------------------------------------------ settings
$Root = $PSScriptRoot
$OnWindows = [System.Runtime.InteropServices.RuntimeInformation]::IsOSPlatform([System.Runtime.InteropServices.OSPlatform]::Windows)
$Configuration = if ($env:CONFIGURATION) { $env:CONFIGURATION } else { 'Release' }
$BuildDir = if ($env:SHARDWISE_BUILD_DIR) { $env:SHARDWISE_BUILD_DIR } else { 'build/native' }
if (-not [System.IO.Path]::IsPathRooted($BuildDir)) { $BuildDir = Join-Path $Root $BuildDir }
$Jobs = if ($env:SHARDWISE_JOBS) { $env:SHARDWISE_JOBS } else { [Environment]::ProcessorCount }
$CtestTimeout = if ($env:SHARDWISE_CTEST_TIMEOUT) { $env:SHARDWISE_CTEST_TIMEOUT } else { '900' }
$ResultsDir = Join-Path $Root 'build/test-results'
$Solution = Join-Path $Root 'Shardwise.slnx'
$TestProject = Join-Path $Root 'tests/Shardwise.Tests.csproj'
$TorchTestProject = Join-Path $Root 'tests/TorchSharp/Shardwise.TorchSharp.Tests.csproj'
$BenchProject = Join-Path $Root 'bench/Shardwise.Bench.csproj'
$PackagesDir = Join-Path $Root 'artifacts/packages'
# The package sample's own global packages folder (samples/PackageSample/nuget.config): pack empties it of
# Shardwise packages so that an earlier package of the same version can never be what the sample runs.
$SamplePackagesDir = Join-Path $Root 'artifacts/sample-packages'
$SamplesOut = Join-Path $Root 'artifacts/samples'
$PackedProjects = @((Join-Path $Root 'src/Bindings/Shardwise.Bindings.csproj'), (Join-Path $Root 'src/Parallel/Shardwise.Parallel.csproj'))

# Where MSBuild looks for the native library (Directory.Build.props reads this variable; it also reaches
# the projects BenchmarkDotNet builds in child processes). Windows multi-config builds add lib/<Config>/.
$env:SHARDWISE_NATIVE_DIR = Join-Path $BuildDir 'lib'
$env:DOTNET_CLI_TELEMETRY_OPTOUT = '1'
$env:DOTNET_NOLOGO = '1'
$env:DOTNET_SKIP_FIRST_TIME_EXPERIENCE = '1'
$env:DOTNET_CLI_UI_LANGUAGE = 'en'

# System packages the build needs (Debian names), as in build.sh (gcc and binutils: the NativeAOT linker and
# objcopy; unzip: build.sh's package check; Open MPI: the MPI plugin and the multi-process tests).
$AptPackages = @('cmake', 'make', 'g++', 'gcc', 'binutils', 'libopenblas0-pthread', 'libopenblas-dev', 'unzip', 'libopenmpi-dev', 'openmpi-bin')

function Write-Step([string] $Text) { Write-Host "==> $Text" }

# Runs a native command and throws when it fails.
function Invoke-Checked([string] $Exe, [string[]] $ArgumentList) {
    & $Exe @ArgumentList
    if ($LASTEXITCODE -ne 0) { throw "'$Exe $($ArgumentList -join ' ')' failed with exit code $LASTEXITCODE" }
}

function Test-Command([string] $Name) { [bool](Get-Command $Name -CommandType Application -ErrorAction SilentlyContinue) }

# ------------------------------------------------------------------------------------------ deps
# Idempotent: checks first, runs apt-get (update + install) only when something is missing.
function Install-Deps {
    if ($env:SHARDWISE_SKIP_DEPS -eq '1') { return }
    Write-Step 'dependencies'
    if (-not $OnWindows -and (Test-Command 'dpkg-query')) {
        $missing = @($AptPackages | Where-Object {
                (& dpkg-query -W '-f=${db:Status-Status}' $_ 2>$null) -ne 'installed'
            })
        if ($missing.Count -gt 0) {
            $sudo = @()
            if ((& id -u) -ne '0') {
                if (-not (Test-Command 'sudo')) { throw "missing packages ($missing) and not root (no sudo)" }
                $sudo = @('sudo')
            }
            Write-Step "installing $missing"
            $apt = $sudo + @('env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get')
            Invoke-Checked $apt[0] (@($apt | Select-Object -Skip 1) + @('update', '-qq'))
            Invoke-Checked $apt[0] (@($apt | Select-Object -Skip 1) + @('install', '-y', '-qq', '--no-install-recommends') + $missing)
        }
    }
    Install-CudaToolkit
    foreach ($tool in 'cmake', 'ctest', 'dotnet') {
        if (-not (Test-Command $tool)) { throw "'$tool' not found (Linux: $AptPackages; .NET 10 SDK for dotnet)" }
    }
    $sdk = & dotnet --version 2>$null
    if ($LASTEXITCODE -ne 0 -or [int]($sdk -split '\.')[0] -lt 10) { throw 'no .NET SDK 10.0 or later matching global.json' }
}

# ------------------------------------------------------------------------------------------ CUDA toolkit (opt-in)
# As build.sh's cuda_deps: SHARDWISE_INSTALL_CUDA=1 (Linux) and no nvcc (or nvcc 11 without clang-14): install
# Debian's nvidia-cuda-toolkit (contrib/non-free; the archive source is added unless some source already has
# both components) and clang-14, which CMakeLists.txt uses as nvcc 11.8's host compiler. Idempotent.
$CudaAptSource = '/etc/apt/sources.list.d/shardwise-cuda.sources'
function Install-CudaToolkit {
    if ($env:SHARDWISE_INSTALL_CUDA -ne '1' -or $OnWindows) { return }
    if (Test-Command 'nvcc') {
        if (Test-Command 'clang++-14') { return }
        $release = & nvcc --version 2>$null | Select-String -Pattern 'release (\d+)\.' | Select-Object -First 1
        if ($release -and [int]$release.Matches[0].Groups[1].Value -ge 12) { return }
    }
    if (-not (Test-Command 'apt-get')) { throw 'SHARDWISE_INSTALL_CUDA=1 needs apt-get (Debian)' }
    $sudo = @()
    if ((& id -u) -ne '0') {
        if (-not (Test-Command 'sudo')) { throw 'SHARDWISE_INSTALL_CUDA=1: not root (no sudo)' }
        $sudo = @('sudo')
    }
    Write-Step 'CUDA toolkit (SHARDWISE_INSTALL_CUDA=1): nvidia-cuda-toolkit, clang-14'
    $sources = @('/etc/apt/sources.list') + @(Get-ChildItem -Path '/etc/apt/sources.list.d' -File -ErrorAction SilentlyContinue |
            Where-Object { $_.Name -match '\.(list|sources)$' } | ForEach-Object { $_.FullName })
    $hasComponents = $false
    foreach ($file in $sources) {
        if (-not (Test-Path -LiteralPath $file -PathType Leaf)) { continue }
        foreach ($line in Get-Content -LiteralPath $file) {
            if ($line -notmatch '^\s*#' -and $line -match '(^|\s)contrib(\s|$)' -and $line -match '(^|\s)non-free(\s|$)') {
                $hasComponents = $true
            }
        }
    }
    if (-not $hasComponents) {
        $os = @{}
        if (Test-Path -LiteralPath '/etc/os-release') {
            foreach ($line in Get-Content -LiteralPath '/etc/os-release') {
                if ($line -match '^([A-Z_]+)=(.*)$') { $os[$Matches[1]] = $Matches[2].Trim('"') }
            }
        }
        # Debian only (elsewhere, e.g. Ubuntu's multiverse, the package's component is left to the system).
        if ($os['ID'] -eq 'debian' -and $os['VERSION_CODENAME']) {
            $codename = $os['VERSION_CODENAME']
            $text = "Types: deb`nURIs: http://deb.debian.org/debian`nSuites: $codename $codename-updates`n" +
                "Components: contrib non-free`nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg`n"
            if ($sudo.Count -gt 0) {
                $text | & sudo tee $CudaAptSource > $null
                if ($LASTEXITCODE -ne 0) { throw "cannot write $CudaAptSource" }
            } else {
                [System.IO.File]::WriteAllText($CudaAptSource, $text)
            }
        }
    }
    $apt = $sudo + @('env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get')
    Invoke-Checked $apt[0] (@($apt | Select-Object -Skip 1) + @('update', '-qq'))
    $pkgs = @('nvidia-cuda-toolkit')
    # clang-14 only where the archive has it (newer releases ship an nvcc that accepts their g++).
    & apt-cache show clang-14 *> $null
    if ($LASTEXITCODE -eq 0) { $pkgs += 'clang-14' }
    Invoke-Checked $apt[0] (@($apt | Select-Object -Skip 1) + @('install', '-y', '-qq', '--no-install-recommends') + $pkgs)
    if (-not (Test-Command 'nvcc')) { throw "SHARDWISE_INSTALL_CUDA=1: nvcc still missing after installing $pkgs" }
}

# ------------------------------------------------------------------------------------------ native
function Build-Native {
    Write-Step "native: configure ($Configuration) in $BuildDir"
    Invoke-Checked 'cmake' @('-S', $Root, '-B', $BuildDir, "-DCMAKE_BUILD_TYPE=$Configuration")
    Write-Step 'native: build'
    Invoke-Checked 'cmake' @('--build', $BuildDir, '--config', $Configuration, '-j', "$Jobs")
}

$script:Ctest = @{ Passed = 0; Failed = 0; Skipped = 0; ExitCode = 0 }
function Invoke-NativeChecks {
    Write-Step 'native: checks (ctest)'
    New-Item -ItemType Directory -Force -Path $ResultsDir | Out-Null
    $junit = Join-Path $ResultsDir 'ctest-junit.xml'
    Remove-Item -Force -ErrorAction SilentlyContinue $junit
    & ctest --test-dir $BuildDir -C $Configuration --output-on-failure --timeout $CtestTimeout --output-junit $junit
    $script:Ctest.ExitCode = $LASTEXITCODE
    if (Test-Path $junit) {
        # Per test case: run = passed, fail = failed, disabled = skipped, notrun = skipped when CTest skipped
        # it on purpose (SKIP_RETURN_CODE / SKIP_REGULAR_EXPRESSION), failed otherwise.
        foreach ($case in ([xml](Get-Content -Raw $junit)).SelectNodes('//testcase')) {
            switch ($case.GetAttribute('status')) {
                'run' { $script:Ctest.Passed++ }
                'disabled' { $script:Ctest.Skipped++ }
                'notrun' {
                    $skipped = $case.SelectSingleNode('skipped')
                    if ($skipped -and $skipped.GetAttribute('message').StartsWith('SKIP_')) { $script:Ctest.Skipped++ }
                    else { $script:Ctest.Failed++ }
                }
                default { $script:Ctest.Failed++ }
            }
        }
    }
    if ($script:Ctest.ExitCode -ne 0 -and $script:Ctest.Failed -eq 0) { $script:Ctest.Failed = 1 }
}

# ------------------------------------------------------------------------------------------ dotnet
function Build-Dotnet {
    Write-Step "dotnet build ($Configuration)"
    Invoke-Checked 'dotnet' @('build', $Solution, '-c', $Configuration, '-nologo', '-nodeReuse:false', '-v:minimal')
}

# Path of a project's built assembly (asks MSBuild, so a TargetFramework change is followed).
function Get-TargetPath([string] $Project) {
    $out = & dotnet msbuild $Project -nologo -nodeReuse:false -getProperty:TargetPath "-p:Configuration=$Configuration"
    if ($LASTEXITCODE -ne 0) { throw "cannot evaluate $Project" }
    $path = (@($out) | Where-Object { $_ -and $_.Trim() } | Select-Object -Last 1).Trim()
    if (-not (Test-Path $path)) { throw "not built: $path" }
    $path
}

# Runs a Microsoft.Testing.Platform test executable (DLL) with a TRX report in $TrxDir/$TrxName plus the given
# arguments; returns its exit code and the report's counters (passed; failed + error + timeout + aborted;
# notExecuted = skipped/ignored), 0 without a report.
function Invoke-MtpTests([string] $TestDll, [string] $TrxDir, [string] $TrxName, [string[]] $ExtraArgs) {
    Remove-Item -Recurse -Force -ErrorAction SilentlyContinue $TrxDir
    New-Item -ItemType Directory -Force -Path $TrxDir | Out-Null
    # Its output goes to the host, not into this function's result.
    & dotnet $TestDll --results-directory $TrxDir --report-trx --report-trx-filename $TrxName @ExtraArgs | Out-Host
    $result = @{ Passed = 0; Failed = 0; Skipped = 0; ExitCode = $LASTEXITCODE }
    $trx = Join-Path $TrxDir $TrxName
    if (Test-Path $trx) {
        $counters = ([xml](Get-Content -Raw $trx)).TestRun.ResultSummary.Counters
        $n = { param($name) $v = $counters.GetAttribute($name); if ($v) { [int]$v } else { 0 } }
        $result.Passed = & $n 'passed'
        $result.Failed = (& $n 'failed') + (& $n 'error') + (& $n 'timeout') + (& $n 'aborted')
        $result.Skipped = & $n 'notExecuted'
    }
    $result
}

$script:NUnit = @{ Passed = 0; Failed = 0; Skipped = 0; ExitCode = 0 }
function Invoke-NUnitTests([string[]] $ExtraArgs) {
    $testDll = Get-TargetPath $TestProject
    # Informational options (help, listing): run them as they are, without counting.
    if (@($ExtraArgs | Where-Object { $_ -in '-?', '-h', '--help', '--info', '--list-tests' }).Count -gt 0) {
        & dotnet $testDll @ExtraArgs
        exit $LASTEXITCODE
    }
    Write-Step 'NUnit tests (Microsoft.Testing.Platform)'
    $script:NUnit = Invoke-MtpTests $testDll (Join-Path $ResultsDir 'nunit') 'nunit.trx' $ExtraArgs
    # Exit codes: 0 ok, 2 failed tests, 8 no test ran; others: the run itself failed (counted as one).
    $rc = $script:NUnit.ExitCode
    if ($rc -ne 0 -and $rc -ne 8 -and $script:NUnit.Failed -eq 0) { $script:NUnit.Failed = 1 }
    if ($rc -eq 8) { Write-Warning 'the test executable ran no test (filter matched nothing?)' }
}

# ------------------------------------------------------------------------------------------ packages
$script:PackageVersion = ''
function Invoke-Pack {
    Write-Step "pack ($Configuration) into $PackagesDir"
    New-Item -ItemType Directory -Force -Path $PackagesDir | Out-Null
    Get-ChildItem -Path $PackagesDir -File -Filter 'Shardwise.*' | Where-Object { $_.Name -match '\.s?nupkg$' } | Remove-Item -Force
    foreach ($id in 'shardwise.bindings', 'shardwise.parallel') {
        $extracted = Join-Path $SamplePackagesDir $id
        if (Test-Path -LiteralPath $extracted) { Remove-Item -Recurse -Force -LiteralPath $extracted }
    }
    $packArgs = @('-c', $Configuration, '-o', $PackagesDir, '-nologo', '-nodeReuse:false', '-v:minimal')
    if ($env:SHARDWISE_VERSION) { $packArgs += "-p:Version=$($env:SHARDWISE_VERSION)" }
    foreach ($project in $PackedProjects) { Invoke-Checked 'dotnet' (@('pack', $project) + $packArgs) }
    Test-Packages
}

# Fails unless both packages hold what a consumer needs: assemblies with XML docs, the README, the licence
# expression, the native library (and the CUDA plugin when it was built) under runtimes/<rid>/native.
function Test-Packages {
    Write-Step "pack: checking the packages' contents"
    Add-Type -AssemblyName System.IO.Compression.FileSystem
    $bindings = Get-ChildItem -Path $PackagesDir -File -Filter 'Shardwise.Bindings.*.nupkg' | Select-Object -First 1
    $parallel = Get-ChildItem -Path $PackagesDir -File -Filter 'Shardwise.Parallel.*.nupkg' | Select-Object -First 1
    if (-not $bindings -or -not $parallel) { throw "pack: packages missing in $PackagesDir" }
    $script:PackageVersion = $bindings.BaseName.Substring('Shardwise.Bindings.'.Length)
    $arch = [System.Runtime.InteropServices.RuntimeInformation]::OSArchitecture.ToString().ToLowerInvariant()
    $rid = if ($OnWindows) { "win-$arch" } elseif ($IsMacOS) { "osx-$arch" } else { "linux-$arch" }
    $libName = if ($OnWindows) { 'shardwise.dll' } elseif ($IsMacOS) { 'libshardwise.dylib' } else { 'libshardwise.so' }
    $pluginName = if ($OnWindows) { 'shardwise_cuda.dll' } else { 'libshardwise_cuda.so' }
    $native = @("runtimes/$rid/native/$libName")
    $libDir = Join-Path $BuildDir 'lib'
    if ((Test-Path (Join-Path $libDir $pluginName)) -or (Test-Path (Join-Path (Join-Path $libDir $Configuration) $pluginName))) {
        $native += "runtimes/$rid/native/$pluginName"
    }
    Test-Package $bindings.FullName (@('README.md', 'lib/net10.0/Shardwise.Bindings.dll', 'lib/net10.0/Shardwise.Bindings.xml') + $native) | Out-Null
    $nuspec = Test-Package $parallel.FullName @('README.md', 'lib/net10.0/Shardwise.Parallel.dll', 'lib/net10.0/Shardwise.Parallel.xml')
    if (-not $nuspec.Contains("<dependency id=""Shardwise.Bindings"" version=""$($script:PackageVersion)""")) {
        throw "pack: $($parallel.Name) does not depend on Shardwise.Bindings $($script:PackageVersion)"
    }
}

# Every entry is in the package and its nuspec has the licence and the readme; returns the nuspec's text.
function Test-Package([string] $Package, [string[]] $Entries) {
    $zip = [System.IO.Compression.ZipFile]::OpenRead($Package)
    try {
        $names = @($zip.Entries | ForEach-Object { $_.FullName })
        foreach ($entry in $Entries) {
            if ($names -cnotcontains $entry) { throw "pack: $(Split-Path -Leaf $Package) lacks $entry" }
        }
        $spec = $zip.Entries | Where-Object { $_.FullName -like '*.nuspec' } | Select-Object -First 1
        if (-not $spec) { throw "pack: no nuspec in $Package" }
        $reader = [System.IO.StreamReader]::new($spec.Open())
        try { $nuspec = $reader.ReadToEnd() } finally { $reader.Dispose() }
    }
    finally { $zip.Dispose() }
    if (-not $nuspec.Contains('<license type="expression">MIT</license>')) { throw "pack: $(Split-Path -Leaf $Package) has no MIT licence expression" }
    if (-not $nuspec.Contains('<readme>README.md</readme>')) { throw "pack: $(Split-Path -Leaf $Package) names no README" }
    Write-Host "  $(Split-Path -Leaf $Package): $(($names | Where-Object { $_ -match '^(README\.md|lib/|runtimes/)' }) -join ' ')"
    $nuspec
}

# ------------------------------------------------------------------------------------------ samples
# Runs a sample with the native-library override removed, so that it loads the library it ships with.
function Invoke-Sample([string] $Name, [string] $Exe, [string[]] $ArgumentList) {
    $saved = $env:SHARDWISE_NATIVE_PATH
    $env:SHARDWISE_NATIVE_PATH = $null
    try {
        & $Exe @ArgumentList
        if ($LASTEXITCODE -ne 0) { throw "$Name failed (exit code $LASTEXITCODE)" }
    }
    finally { $env:SHARDWISE_NATIVE_PATH = $saved }
}

function Invoke-PackageSample {
    $project = Join-Path $Root 'samples/PackageSample/PackageSample.csproj'
    Write-Step "sample: PackageSample (Shardwise.Parallel $($script:PackageVersion) from $PackagesDir)"
    # --force: resolve the packages again even if the last restore succeeded (pack has just replaced them).
    Invoke-Checked 'dotnet' @('build', $project, '-c', $Configuration, '--force', '-nologo', '-nodeReuse:false', '-v:minimal',
        "--property:ShardwiseVersion=$($script:PackageVersion)")
    $out = Split-Path -Parent (Get-TargetPath $project)
    # What the sample runs must be what was just built and packed, not a copy cached from an earlier pack.
    $ridDir = Get-ChildItem -Path (Join-Path $out 'runtimes') -Directory -ErrorAction SilentlyContinue |
        ForEach-Object { Join-Path $_.FullName 'native' } | Where-Object { Test-Path $_ } | Select-Object -First 1
    if (-not $ridDir) { throw "PackageSample: no runtimes/<rid>/native folder in $out (the package's native library did not arrive)" }
    $libName = if ($OnWindows) { 'shardwise.dll' } elseif ($IsMacOS) { 'libshardwise.dylib' } else { 'libshardwise.so' }
    $built = @((Join-Path (Join-Path $BuildDir 'lib') $libName), (Join-Path (Join-Path (Join-Path $BuildDir 'lib') $Configuration) $libName)) |
        Where-Object { Test-Path $_ } | Select-Object -First 1
    if (-not $built -or (Get-FileHash $built).Hash -ne (Get-FileHash (Join-Path $ridDir $libName)).Hash) {
        throw "PackageSample: $(Join-Path $ridDir $libName) differs from the library just built"
    }
    foreach ($name in 'Bindings', 'Parallel') {
        $packed = Join-Path $Root "src/$name/bin/$Configuration/net10.0/Shardwise.$name.dll"
        if ((Get-FileHash $packed).Hash -ne (Get-FileHash (Join-Path $out "Shardwise.$name.dll")).Hash) {
            throw "PackageSample: Shardwise.$name.dll differs from the assembly just packed"
        }
    }
    Invoke-Sample 'PackageSample' 'dotnet' @((Join-Path $out 'PackageSample.dll'))
}

function Invoke-AotSample {
    $project = Join-Path $Root 'samples/AotSample/AotSample.csproj'
    $out = Join-Path $SamplesOut 'AotSample'
    Write-Step 'sample: AotSample (NativeAOT publish; trim/AOT warnings are errors)'
    if (Test-Path -LiteralPath $out) { Remove-Item -Recurse -Force -LiteralPath $out }
    $log = & dotnet publish $project -c $Configuration -o $out -nologo -nodeReuse:false -v:minimal 2>&1 | ForEach-Object { "$_" }
    $rc = $LASTEXITCODE
    $log | Write-Host
    if ($rc -ne 0) { throw "AotSample: publish failed (exit code $rc)" }
    $warnings = @($log | Where-Object { $_ -match 'warning [A-Z]+[0-9]+' }).Count
    if ($warnings -ne 0) { throw "AotSample: publish reported $warnings warning(s)" }
    $exe = Join-Path $out $(if ($OnWindows) { 'AotSample.exe' } else { 'AotSample' })
    Write-Host "  AotSample: published with 0 warnings: $([math]::Round((Get-Item $exe).Length / 1MB, 1)) MB executable"
    Invoke-Sample 'AotSample' $exe @()
}

function Invoke-PInvokeSample {
    $project = Join-Path $Root 'samples/PInvokeSample/PInvokeSample.csproj'
    Write-Step 'sample: PInvokeSample (the C ABI through its own LibraryImport declarations)'
    Invoke-Checked 'dotnet' @('build', $project, '-c', $Configuration, '-nologo', '-nodeReuse:false', '-v:minimal')
    $out = Split-Path -Parent (Get-TargetPath $project)
    Invoke-Sample 'PInvokeSample' 'dotnet' @((Join-Path $out 'PInvokeSample.dll'))
}

# The TorchSharp interop tests: a separate project (not in the solution, so that the main build does not download
# libtorch), built and run after the main suite with the same arguments; its counts join the totals. Where libtorch
# cannot load (libstdc++ without GLIBCXX_3.4.32) its tests report Ignored. SHARDWISE_SKIP_TORCHSHARP=1 leaves them out.
$script:Torch = @{ Passed = 0; Failed = 0; Skipped = 0; ExitCode = 0 }
function Invoke-TorchSharpTests([string[]] $ExtraArgs) {
    if ($env:SHARDWISE_SKIP_TORCHSHARP -eq '1') { return }
    Write-Step 'TorchSharp interop tests: build'
    & dotnet build $TorchTestProject -c $Configuration -nologo -nodeReuse:false -v:minimal
    if ($LASTEXITCODE -ne 0) {
        Write-Warning 'the TorchSharp interop tests did not build'
        $script:Torch.Failed = 1; $script:Torch.ExitCode = 1
        return
    }
    $testDll = Get-TargetPath $TorchTestProject
    Write-Step 'TorchSharp interop tests (Microsoft.Testing.Platform)'
    $script:Torch = Invoke-MtpTests $testDll (Join-Path $ResultsDir 'torchsharp') 'torchsharp.trx' $ExtraArgs
    # 8 = no test ran (a filter meant for the main suite may match nothing here): not a failure.
    if ($script:Torch.ExitCode -eq 8) { $script:Torch.ExitCode = 0 }
    if ($script:Torch.ExitCode -ne 0 -and $script:Torch.Failed -eq 0) { $script:Torch.Failed = 1 }
}

# ------------------------------------------------------------------------------------------ commands
function Show-Help {
    # The DESCRIPTION block of the comment-based help above.
    $text = Get-Content -Raw -LiteralPath $PSCommandPath
    $start = $text.IndexOf('.DESCRIPTION') + '.DESCRIPTION'.Length
    Write-Host ($text.Substring($start, $text.IndexOf('#>') - $start).Trim("`r", "`n"))
}

function Invoke-Run([string] $Job, [string[]] $ExtraArgs) {
    Install-Deps
    Build-Native
    Build-Dotnet
    $benchDll = Get-TargetPath $BenchProject
    if ($Job -eq 'main') { Write-Step 'main job' } else { Write-Step 'benchmarks (BenchmarkDotNet)' }
    # Without arguments BenchmarkDotNet asks which benchmarks to run: run them all instead (unattended runs).
    if ($Job -eq 'bench' -and $ExtraArgs.Count -eq 0) { $ExtraArgs = @('--filter', '*') }
    & dotnet $benchDll $Job @ExtraArgs
    exit $LASTEXITCODE
}

# The bandwidth scenario of the multi-process worker, run from the test output folder (worker and launcher/ are
# copied there). Not part of `test`: it measures, it does not check speed.
function Invoke-BenchMp([string[]] $ExtraArgs) {
    $usage = 'usage: ./build.ps1 bench-mp [N] [tcp|mpi]'
    if ($ExtraArgs.Count -gt 2) { throw "bench-mp: too many arguments ($usage)" }
    $n = if ($ExtraArgs.Count -ge 1) { $ExtraArgs[0] } else { '2' }
    $transport = if ($ExtraArgs.Count -ge 2) { $ExtraArgs[1] } else { 'tcp' }
    if ($n -notmatch '^[1-9][0-9]*$') { throw "bench-mp: N must be a positive rank count, got '$n' ($usage)" }
    if ($transport -notin 'tcp', 'mpi') { throw "bench-mp: transport must be tcp or mpi, got '$transport'" }
    Install-Deps
    Build-Native
    Build-Dotnet
    $out = Split-Path -Parent (Get-TargetPath $TestProject)
    $worker = Join-Path $out 'Shardwise.MultiProcessWorker.dll'
    $launcher = Join-Path $out 'launcher/shardwise.dll'
    if (-not (Test-Path $worker)) { throw "bench-mp: worker not built: $worker" }
    Write-Step "collective bandwidth: $n ranks over $transport"
    if ($transport -eq 'tcp') {
        if (-not (Test-Path $launcher)) { throw "bench-mp: launcher not built: $launcher" }
        & dotnet $launcher launch -n $n --no-prefix -- dotnet $worker bandwidth
        exit $LASTEXITCODE
    }
    if (-not (Test-Command 'mpirun')) { throw 'bench-mp: mpirun not found (Debian: apt-get install openmpi-bin libopenmpi-dev)' }
    $forward = @('SW_BW_MIN_BYTES', 'SW_BW_MAX_BYTES', 'SW_BW_ITERS', 'SW_BW_WARMUP', 'SW_BW_IN_PLACE', 'SW_TEST_TIMEOUT_MS' |
        Where-Object { [Environment]::GetEnvironmentVariable($_) } | ForEach-Object { '-x'; $_ })
    & mpirun --allow-run-as-root --oversubscribe -n $n @forward dotnet $worker bandwidth
    exit $LASTEXITCODE
}

function Invoke-Test([string[]] $ExtraArgs) {
    Install-Deps
    Build-Native
    Invoke-NativeChecks
    Build-Dotnet
    Invoke-NUnitTests $ExtraArgs
    Invoke-TorchSharpTests $ExtraArgs
    $c = $script:Ctest; $u = $script:NUnit; $t = $script:Torch
    $passed = $u.Passed + $t.Passed + $c.Passed
    $failed = $u.Failed + $t.Failed + $c.Failed
    $skipped = $u.Skipped + $t.Skipped + $c.Skipped
    Write-Step "summary: NUnit $($u.Passed)/$($u.Failed)/$($u.Skipped), TorchSharp $($t.Passed)/$($t.Failed)/$($t.Skipped), ctest $($c.Passed)/$($c.Failed)/$($c.Skipped) (passed/failed/skipped)"
    # The last line of output, for CI: totals over NUnit tests and native checks (one per ctest program).
    Write-Host "$passed passed, $failed failed, $skipped skipped"
    if ($failed -gt 0 -or $u.ExitCode -ne 0 -or $t.ExitCode -ne 0 -or $c.ExitCode -ne 0 -or ($passed + $failed) -eq 0) { exit 1 }
    exit 0
}

function Invoke-Clean {
    Write-Step 'clean'
    $targets = @($BuildDir, 'build', 'artifacts', 'BenchmarkDotNet.Artifacts', 'TestResults') +
        @('src/Bindings', 'src/Parallel', 'src/Launcher', 'tests', 'tests/MultiProcess', 'tests/TorchSharp', 'bench', 'samples/PackageSample', 'samples/AotSample', 'samples/PInvokeSample', 'samples/TorchSharpInterop' |
            ForEach-Object { "$_/bin"; "$_/obj" })
    foreach ($t in $targets) {
        $path = if ([System.IO.Path]::IsPathRooted($t)) { $t } else { Join-Path $Root $t }
        if ((Resolve-Path -LiteralPath $path -ErrorAction SilentlyContinue).Path -eq (Resolve-Path $Root).Path) {
            throw "refusing to delete $path"
        }
        if (Test-Path -LiteralPath $path) { Remove-Item -Recurse -Force -LiteralPath $path }
    }
}

Push-Location -LiteralPath $Root
try {
    switch ($Command) {
        'run' { Invoke-Run 'main' $Arguments }
        'test' { Invoke-Test $Arguments }
        'bench' { Invoke-Run 'bench' $Arguments }
        'bench-mp' { Invoke-BenchMp $Arguments }
        'native' { Install-Deps; Build-Native }
        'fault-trials' {
            if (-not $IsLinux) { throw 'fault-trials: Linux only (it SIGKILLs and SIGSTOPs ranks, and runs mpirun); use ./build.sh fault-trials on Linux' }
            Install-Deps; Build-Native
            $env:SW_FAULT_BIN = Join-Path $BuildDir 'bin/fault_check'
            & bash (Join-Path $Root 'scripts/fault-trials.sh') @Arguments
            if ($LASTEXITCODE -ne 0) { throw "fault-trials failed ($LASTEXITCODE)" }
        }
        'pack' { Install-Deps; Build-Native; Invoke-Pack }
        'samples' {
            Install-Deps; Build-Native; Invoke-Pack
            Invoke-PackageSample; Invoke-AotSample; Invoke-PInvokeSample
            Write-Step 'samples: all passed'
        }
        'gpu-bundle' {
            # Linux only: the bundle targets a Linux CUDA machine.
            Install-Deps
            & bash (Join-Path $Root 'scripts/gpu-bundle.sh') @Arguments
            if ($LASTEXITCODE -ne 0) { throw "gpu-bundle failed ($LASTEXITCODE)" }
        }
        'cuda12-check' {
            # Debian only: the toolkit comes from Debian trixie's archive.
            Install-Deps
            & bash (Join-Path $Root 'scripts/cuda12-check.sh')
            if ($LASTEXITCODE -eq 77) { Write-Step 'cuda12-check: skipped (see above)'; exit 77 }
            if ($LASTEXITCODE -ne 0) { throw "cuda12-check failed ($LASTEXITCODE)" }
        }
        { $_ -in 'asan', 'fuzz' } {
            # Linux only (the sanitizer runtimes, libFuzzer and clang-14 of Debian): forwarded to build.sh.
            if (-not $IsLinux) { throw "$Command is Linux only (gcc/clang-14 sanitizer runtimes, libFuzzer); run ./build.sh $Command on Linux" }
            & bash (Join-Path $Root 'build.sh') $Command @Arguments
            if ($LASTEXITCODE -ne 0) { throw "$Command failed ($LASTEXITCODE)" }
        }
        'deps' { Install-Deps }
        'clean' { Invoke-Clean }
        { $_ -in 'help', '-h', '--help' } { Show-Help }
        default { [Console]::Error.WriteLine("build.ps1: unknown command '$Command'"); Show-Help; exit 2 }
    }
}
catch {
    [Console]::Error.WriteLine("build.ps1: error: $($_.Exception.Message)")
    exit 1
}
finally {
    Pop-Location
}
