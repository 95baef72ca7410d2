// dpdk-testpmd (Debian package dpdk-dev) as a child process of an interop test: started without
// hugepages (--no-huge; net_vhost and virtio-user with --single-file-segments both work that way,
// checked against DPDK 22.11), its own --file-prefix so parallel tests never share DPDK's runtime
// directory, stdin on a pipe the test holds, and stdout+stderr in a log file the test prints when
// something fails.
//
// Stopping: closing stdin is testpmd's clean exit in both modes (non-interactive testpmd waits for
// "enter", interactive testpmd quits on end of input); it prints the "Accumulated forward
// statistics" block on the way out, which forward_stats() parses. kill() is the crash.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace iovirt::interop {

inline constexpr const char* kTestpmd = "/usr/bin/dpdk-testpmd";

inline bool testpmd_installed() { return ::access(kTestpmd, X_OK) == 0; }

// "(0,1)": every CPU this process may run on. testpmd's two lcores (main and forwarding) float
// over all of them instead of being pinned, so parallel tests on a small CI machine share CPUs.
inline std::string allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::string s;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (!CPU_ISSET(c, &set)) continue;
      if (!s.empty()) s += ',';
      s += std::to_string(c);
    }
  }
  if (s.empty()) s = "0";
  return "(" + s + ")";
}

struct ForwardStats {
  uint64_t rx_packets = 0;
  uint64_t tx_packets = 0;
  uint64_t tx_dropped = 0;  // the PMD refused them (ring full)
};

class Testpmd {
 public:
  Testpmd() = default;
  Testpmd(const Testpmd&) = delete;
  Testpmd& operator=(const Testpmd&) = delete;
  ~Testpmd() { kill(SIGKILL); }

  // vdev: "net_vhost0,iface=/x.sock" or "net_virtio_user0,path=/x.sock,queues=1".
  // app_args: testpmd's own options (after "--"). log: where its output goes (appended).
  // Returns false (with errno) if fork fails; a bad command line shows in the log and in exited().
  bool start(const std::string& prefix, const std::string& vdev, const std::vector<std::string>& app_args,
             const std::string& log) {
    log_ = log;
    prefix_ = prefix;
    std::vector<std::string> args = {kTestpmd,
                                     "--lcores",
                                     "0@" + allowed_cpus() + ",1@" + allowed_cpus(),
                                     "--no-huge",
                                     "-m",
                                     "256",
                                     "--no-pci",
                                     "--no-telemetry",
                                     "--file-prefix",
                                     prefix,
                                     "--vdev",
                                     vdev};
    // virtio-user shares its memory with the back-end by fd: one file for all of it (else "Too many
    // memory regions"), and no shared config, which lets --no-huge memory be a memfd.
    if (vdev.starts_with("net_virtio_user")) {
      args.push_back("--single-file-segments");
      args.push_back("--no-shconf");
    }
    args.push_back("--");
    // 2048 mbufs are plenty for one queue of 256 and fit in the 256 MiB above (the default pool is
    // sized for many ports and does not).
    args.push_back("--total-num-mbufs=2048");
    args.push_back("--nb-cores=1");
    for (const auto& a : app_args) args.push_back(a);

    // A command to a testpmd that has died must be a failed write, not the test's death.
    ::signal(SIGPIPE, SIG_IGN);
    int in[2];
    if (::pipe2(in, O_CLOEXEC) != 0) return false;
    pid_ = ::fork();
    if (pid_ < 0) {
      ::close(in[0]);
      ::close(in[1]);
      return false;
    }
    if (pid_ == 0) {
      int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(in[0], STDIN_FILENO);
      if (out >= 0) {
        ::dup2(out, STDOUT_FILENO);
        ::dup2(out, STDERR_FILENO);
      }
      // Line-buffered: testpmd's stdout is a file here, and its own lines (forwarding started,
      // link checks done) would otherwise still sit in its stdio buffer when a failing test
      // prints the log.
      // stdbuf (coreutils) execs testpmd in the same process, so pid_ stays testpmd's.
      std::string stdbuf_bin = "/usr/bin/stdbuf", line_buffered = "-oL";
      std::vector<char*> argv;
      if (::access(stdbuf_bin.c_str(), X_OK) == 0) {
        argv.push_back(stdbuf_bin.data());
        argv.push_back(line_buffered.data());
      }
      for (auto& a : args) argv.push_back(a.data());  // args[0] is testpmd's path
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(in[0]);
    stdin_ = in[1];
    return true;
  }

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  // One line to an interactive testpmd (-i).
  bool command(const std::string& line) {
    if (stdin_ < 0) return false;
    const std::string l = line + "\n";
    return ::write(stdin_, l.data(), l.size()) == static_cast<ssize_t>(l.size());
  }

  // Has it exited on its own (bad arguments, crash)? Reaps it if so.
  bool exited() {
    if (pid_ <= 0) return true;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      status_ = st;
      close_stdin();
      return true;
    }
    return false;
  }

  // Clean exit: end of input; waits (bounded) and returns true if it exited with status 0.
  bool stop(std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    if (pid_ <= 0) return false;
    close_stdin();
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      if (exited()) return WIFEXITED(status_) && WEXITSTATUS(status_) == 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(SIGKILL);
    return false;
  }

  // The crash (SIGKILL) or any other signal; waits for it and cleans DPDK's runtime directory.
  void kill(int sig) {
    if (pid_ > 0) {
      ::kill(pid_, sig);
      ::waitpid(pid_, &status_, 0);
      pid_ = -1;
    }
    close_stdin();
    if (!prefix_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all("/var/run/dpdk/" + prefix_, ec);
    }
  }

  std::string log() const {
    std::ifstream f(log_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  // The last "Accumulated forward statistics" block in the log (printed by "stop" and on exit).
  std::optional<ForwardStats> forward_stats() const {
    const std::string text = log();
    const size_t at = text.rfind("Accumulated forward statistics");
    if (at == std::string::npos) return std::nullopt;
    ForwardStats s;
    auto field = [&](const std::string& key) -> std::optional<uint64_t> {
      const size_t k = text.find(key, at);
      if (k == std::string::npos) return std::nullopt;
      return std::stoull(text.substr(k + key.size()));
    };
    auto rx = field("RX-packets:");
    auto tx = field("TX-packets:");
    auto tx_dropped = field("TX-dropped:");
    if (!rx || !tx || !tx_dropped) return std::nullopt;
    s.tx_dropped = *tx_dropped;
    s.rx_packets = *rx;
    s.tx_packets = *tx;
    return s;
  }

 private:
  void close_stdin() {
    if (stdin_ >= 0) ::close(stdin_);
    stdin_ = -1;
  }

  pid_t pid_ = -1;
  int stdin_ = -1;
  int status_ = 0;
  std::string log_;
  std::string prefix_;
};

}  // namespace iovirt::interop
